"""`fleet-worker jobs ...`: the job admin commands (fleet_worker.admin) on the command line.
The kubectl plugin runs the same parser and handler against a fleet's database."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from fleet_worker import admin
from fleet_worker.db import Schema
from fleet_worker.durations import parse_duration, parse_timestamp
from fleet_worker.errors import AdminError
from fleet_worker.protocol import JobState
from fleet_worker.settings import WorkerSettings


def add_arguments(jobs: argparse.ArgumentParser) -> None:
    """The `jobs` subcommands, added to `jobs` (a subparser of either CLI)."""
    sub = jobs.add_subparsers(dest="jobs_command", required=True)
    states = [s.value for s in JobState]

    ls = sub.add_parser("list", help="jobs by state, task and queue, oldest due first")
    ls.add_argument("--state", choices=states, default=None)
    ls.add_argument("--task", default=None)
    ls.add_argument("--queue", default=None)
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")

    show = sub.add_parser("show", help="one job, with the pool (pod, node) that runs or ran it")
    show.add_argument("id", type=int)

    hist = sub.add_parser("history", help="completed jobs and where they ran (--keep-history)")
    hist.add_argument("--task", default=None)
    hist.add_argument("--queue", default=None)
    hist.add_argument("--since", type=parse_duration, default=None, help="e.g. 1h")
    hist.add_argument("--limit", type=int, default=50)
    hist.add_argument("--json", action="store_true")

    retry = sub.add_parser("retry", help="run now with every attempt back (failed ones too)")
    retry.add_argument("ids", type=int, nargs="+")

    res = sub.add_parser("reschedule", help="move jobs to another time")
    res.add_argument("ids", type=int, nargs="+")
    when = res.add_mutually_exclusive_group(required=True)
    when.add_argument("--run-at", default=None, help="ISO 8601 timestamp with a time zone")
    when.add_argument("--in", dest="delay", type=parse_duration, default=None, help="e.g. 10m")
    res.add_argument("--priority", type=int, default=None)
    res.add_argument("--max-attempts", type=int, default=None)

    cancel = sub.add_parser("cancel", help="delete jobs that are not running")
    cancel.add_argument("ids", type=int, nargs="+")

    fail = sub.add_parser("fail", help="fail jobs permanently (kept for inspection)")
    fail.add_argument("ids", type=int, nargs="+")
    fail.add_argument("--reason", required=True, help="stored as the job's last error")

    unlock = sub.add_parser("unlock", help="give back every job a pool holds")
    unlock.add_argument("--pool", required=True, help="pool id (`fleet-worker status`)")
    unlock.add_argument(
        "--force", action="store_true", help="a live pool: declare it dead first (it is fenced)"
    )
    unlock.add_argument(
        "--sweep-threshold",
        type=parse_duration,
        default=WorkerSettings.model_fields["sweep_threshold"].default,
        help="for pools that registered no lease of their own",
    )


def run(conn: psycopg.Connection, schema: Schema, args: argparse.Namespace) -> int:
    """Carry out one `jobs` subcommand; prints its result. Exit 0, or 1 when a change
    skipped some of the jobs asked for (each is listed with the reason)."""
    command = args.jobs_command
    if command == "list":
        state = JobState(args.state) if args.state else None
        rows = admin.list_jobs(conn, schema, state=state, task=args.task, queue=args.queue,
                               limit=args.limit)  # fmt: skip
        print(json.dumps(rows, default=str, indent=2) if args.json else _table(rows))
        return 0
    if command == "history":
        rows = admin.job_history(conn, schema, task=args.task, queue=args.queue,
                                 since_s=args.since, limit=args.limit)  # fmt: skip
        print(json.dumps(rows, default=str, indent=2) if args.json else _history_table(rows))
        return 0
    if command == "show":
        job = admin.show_job(conn, schema, args.id)
        if job is None:
            raise AdminError(f"no job {args.id} (never existed, or completed without history)")
        print(json.dumps(job, default=str, indent=2))
        return 0
    if command == "unlock":
        done = admin.unlock_pool(conn, schema, args.pool, force=args.force,
                                 threshold_s=args.sweep_threshold)  # fmt: skip
        dead = "declared it dead; " if done.declared_dead else ""
        later = (
            f"; {done.held} job(s) go back when its lease has run out (the sweep releases "
            "them; the pool exits at its next heartbeat)"
            if done.held
            else ""
        )
        print(f"pool {done.pool_id}: {dead}released {done.released} job(s){later}")
        return 0
    return _report(command, _change(conn, schema, args))


def _change(conn: psycopg.Connection, schema: Schema, args: argparse.Namespace) -> admin.Outcome:
    command, ids = args.jobs_command, args.ids
    if command == "retry":
        return admin.retry_jobs(conn, schema, ids)
    if command == "cancel":
        return admin.cancel_jobs(conn, schema, ids)
    if command == "fail":
        return admin.fail_jobs(conn, schema, ids, args.reason)
    assert command == "reschedule"
    if args.run_at is not None:
        try:
            run_at = parse_timestamp(args.run_at)
        except ValueError as exc:
            raise AdminError(f"--run-at: {exc}") from exc
    else:
        run_at = datetime.now(UTC) + timedelta(seconds=args.delay)
    return admin.reschedule_jobs(conn, schema, ids, run_at, priority=args.priority,
                                 max_attempts=args.max_attempts)  # fmt: skip


def _report(command: str, outcome: admin.Outcome) -> int:
    verb = {"retry": "retried", "cancel": "cancelled", "fail": "failed",
            "reschedule": "rescheduled"}[command]  # fmt: skip
    print(f"{verb} {len(outcome.changed)} job(s): {' '.join(map(str, outcome.changed)) or '-'}")
    for job_id, why in sorted(outcome.skipped.items()):
        print(f"skipped {job_id}: {why}")
    return 1 if outcome.skipped else 0


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no jobs"
    lines = [f"{'ID':>8}  {'STATE':<9}  {'TASK':<24}  {'QUEUE':<12}  {'ATT':>7}  RUN AT / ERROR"]
    for r in rows:
        error = (r.get("last_error") or "").splitlines()[0][:60] if r.get("last_error") else ""
        attempts = f"{r['attempts']}/{r['max_attempts']}"
        lines.append(
            f"{r['id']:>8}  {r['state']:<9}  {r['task_identifier'][:24]:<24}  "
            f"{(r['queue_name'] or '-')[:12]:<12}  {attempts:>7}  {r['run_at']}  {error}"
        )
    return "\n".join(lines)


def _history_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no completed jobs recorded (pools record them only with --keep-history)"
    lines = [f"{'ID':>8}  {'TASK':<24}  {'ATT':>3}  {'COMPLETED AT':<32}  POD / POOL"]
    for r in rows:
        where = r.get("pod_name") or r["pool_id"]
        lines.append(
            f"{r['id']:>8}  {r['task_identifier'][:24]:<24}  {r['attempts']:>3}  "
            f"{r['completed_at']:<32}  {where}"
        )
    return "\n".join(lines)
