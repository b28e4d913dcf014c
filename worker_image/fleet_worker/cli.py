"""`fleet-worker`: run workers, migrate, inspect, enqueue. Every command takes
`--database-url` (or DATABASE_URL) and `--schema` (or FLEET_SCHEMA)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn, TypeAlias

import pydantic

from fleet_worker import jobs_cli
from fleet_worker.app import App, load_app
from fleet_worker.catalog import Catalog
from fleet_worker.db import Schema, connect
from fleet_worker.durations import format_duration, parse_duration, parse_timestamp
from fleet_worker.errors import FleetWorkerError, UsageError
from fleet_worker.exit_codes import ExitCode
from fleet_worker.identifiers import DEFAULT_SCHEMA
from fleet_worker.migrate import migrate, plan
from fleet_worker.queue import JobSpec, add_job
from fleet_worker.recovery import unlock_orphans
from fleet_worker.settings import WorkerSettings
from fleet_worker.status import status_report
from fleet_worker.termination import write_termination_message

log = logging.getLogger("fleet_worker")


class Terminated(BaseException):
    """SIGTERM, raised where the process is: a BaseException like KeyboardInterrupt, so no
    `except Exception` swallows it, and every `with` block on the way out runs (an open
    transaction rolls back, the connection closes)."""


def _stop_on_sigterm() -> None:
    """In a container this process is PID 1, and the kernel drops every signal PID 1 has
    no handler for: without one, SIGTERM is ignored and the pod waits out its whole grace
    period before SIGKILL cuts it off. `run` replaces this with its own graceful drain."""

    def raise_terminated(signum: int, frame: FrameType | None) -> None:
        raise Terminated(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, raise_terminated)


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", default=None, help="PostgreSQL URL (env DATABASE_URL)")
    p.add_argument(
        "--schema",
        default=_env("FLEET_SCHEMA", DEFAULT_SCHEMA),
        help="schema holding the queue (env FLEET_SCHEMA; default fleet_worker)",
    )


def _database_url(args: argparse.Namespace) -> str:
    url = args.database_url or _env("DATABASE_URL")
    if not url:
        raise UsageError("no database: pass --database-url or set DATABASE_URL")
    return str(url)


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad arguments; the pod's status should say which."""

    def error(self, message: str) -> NoReturn:
        write_termination_message(f"exit 2 (USAGE): {self.prog}: {message}")
        super().error(message)


# `run`'s duration flags and the WorkerSettings fields they set; the defaults are the
# settings' own, so the CLI, the settings and the docs cannot disagree.
RUN_DURATIONS = {
    "--heartbeat-interval": "heartbeat_interval",
    "--sweep-interval": "sweep_interval",
    "--sweep-threshold": "sweep_threshold",
    "--max-migration-wait-time": "max_migration_wait",
    "--graceful-shutdown-timeout": "graceful_shutdown_timeout",
    "--poll-interval": "poll_interval",
    "--retry-delay": "retry_delay",
    "--retry-max-delay": "retry_max_delay",
    "--keep-history": "keep_history",
    "--queue-stats-interval": "queue_stats_interval",
}


def _default(field: str) -> Any:
    return WorkerSettings.model_fields[field].default


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fleet-worker", description=__doc__)
    parser.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)
    for add_command in (_run_parser, _migrate_parser, _status_parser, _unlock_orphans_parser,
                        _jobs_parser, _add_job_parser):  # fmt: skip
        add_command(sub)
    return parser


# argparse names no public type for it; the subcommands are _Parsers, as the top is.
Subparsers: TypeAlias = "argparse._SubParsersAction[_Parser]"


def _run_parser(sub: Subparsers) -> None:
    run = sub.add_parser("run", help="run a worker process (one pool)")
    _common(run)
    run.add_argument("--app", default=_env("FLEET_APP"), help="module[:attr] of the App")
    run.add_argument(
        "--migrations",
        choices=["self", "external"],
        default=_env("FLEET_MIGRATIONS", "self"),
        help="self: apply migrations itself; external: wait for the operator's migration Job",
    )
    run.add_argument("--fleet", default=_env("FLEET_NAME", ""))
    run.add_argument("--worker-version", default=_env("WORKER_VERSION"))
    run.add_argument("--concurrency", type=int, default=_default("concurrency"))
    run.add_argument("--batch-size", type=int, default=None)
    run.add_argument(
        "--local-queue-size",
        type=int,
        default=_env("LOCAL_QUEUE_SIZE", "0"),  # argparse applies `type` to a str default
        help="jobs fetched ahead beyond the running ones (env LOCAL_QUEUE_SIZE; 0: off)",
    )
    for flag, name in RUN_DURATIONS.items():
        default = _default(name)
        run.add_argument(
            flag, type=_duration, default=default, help=f"default {format_duration(default)}"
        )
    run.add_argument("--health-host", default=None, help="default: $POD_IP or 127.0.0.1")
    run.add_argument("--health-port", type=int, default=int(_env("HEALTH_PORT", "8080") or 8080))


def _migrate_parser(sub: Subparsers) -> None:
    mig = sub.add_parser(
        "migrate",
        help="apply pending migrations (safe at once, breaking once no live outdated pool remains)",
    )
    _common(mig)
    mig.add_argument("--app", default=_env("FLEET_APP"), help="include the app's migrations")
    mig.add_argument("--to", default=None, help="stop after this migration id")
    mig.add_argument("--plan", action="store_true", help="only show what would happen")
    mig.add_argument("--json", action="store_true")
    mig.add_argument(
        "--force-after",
        type=_duration,
        default=_default("max_migration_wait"),
        help="evict live outdated pools after waiting this long (default 10m)",
    )
    mig.add_argument("--sweep-threshold", type=_duration, default=_default("sweep_threshold"))


def _status_parser(sub: Subparsers) -> None:
    st = sub.add_parser("status", help="schema, pools with liveness, queue counts")
    _common(st)
    st.add_argument("--json", action="store_true")
    st.add_argument("--sweep-threshold", type=_duration, default=_default("sweep_threshold"))


def _unlock_orphans_parser(sub: Subparsers) -> None:
    orphan = sub.add_parser(
        "unlock-orphans",
        help="release jobs locked by anything that is "
        "not a live registered pool (one-time adoption cleanup)",
    )
    _common(orphan)
    orphan.add_argument("--dry-run", action="store_true")


def _jobs_parser(sub: Subparsers) -> None:
    jobs = sub.add_parser(
        "jobs", help="list, inspect, retry, reschedule, cancel or fail jobs; unlock a pool's"
    )
    _common(jobs)
    jobs_cli.add_arguments(jobs)


def _add_job_parser(sub: Subparsers) -> None:
    add = sub.add_parser("add-job", help="enqueue a job")
    _common(add)
    add.add_argument("task")
    add.add_argument("--payload", default="{}", help="JSON")
    add.add_argument("--queue", default=None)
    add.add_argument("--run-at", default=None, help="ISO 8601 timestamp with a time zone")
    add.add_argument("--priority", type=int, default=None)
    add.add_argument("--max-attempts", type=int, default=None)
    add.add_argument("--job-key", default=None)
    add.add_argument(
        "--app", default=_env("FLEET_APP"), help="reject task names the app does not define"
    )


def _app(spec: str | None) -> App | None:
    return load_app(spec) if spec else None


def cmd_run(args: argparse.Namespace) -> int:
    from fleet_worker.runtime import run_worker

    if not args.app:
        raise UsageError("no app: pass --app module[:attr] or set FLEET_APP")
    app = load_app(args.app)
    values: dict[str, Any] = {
        "database_url": _database_url(args),
        "schema_name": args.schema,
        "app": args.app,
        "mode": args.migrations,
        "fleet": args.fleet,
        "version": args.worker_version,
        "concurrency": args.concurrency,
        "batch_size": args.batch_size,
        "local_queue_size": args.local_queue_size,
        "health_port": args.health_port,
    }
    for flag, name in RUN_DURATIONS.items():
        values[name] = getattr(args, flag[2:].replace("-", "_"))
    if args.health_host:
        values["health_host"] = args.health_host
    settings = WorkerSettings(**values)
    return run_worker(settings, app)


def cmd_migrate(args: argparse.Namespace) -> int:
    app = _app(args.app)
    catalog = app.catalog() if app else Catalog.load()
    schema = Schema(args.schema)
    with connect(_database_url(args)) as conn:
        if args.plan:
            report = plan(conn, schema, catalog, args.sweep_threshold)
            _print(report, args.json, _plan_text)
            return 0

        def on_wait(migration: Any, pools: list[Any]) -> None:
            names = ", ".join(f"{p.version}/{p.pod_name or p.pool_id[:8]}" for p in pools)
            log.info("breaking migration %s waits for live outdated pools: %s", migration.id, names)

        result = migrate(
            conn,
            schema,
            catalog,
            to=args.to,
            threshold_s=args.sweep_threshold,
            force_after_s=args.force_after,
            on_wait=on_wait,
        )
    out = {"applied": result.applied, "evicted_pools": result.evicted_pools}
    _print(
        out,
        args.json,
        lambda d: (
            f"applied: {', '.join(d['applied']) or 'nothing'}"
            + (f"\nevicted pools: {', '.join(d['evicted_pools'])}" if d["evicted_pools"] else "")
        ),
    )
    return 0


def _plan_text(report: dict[str, Any]) -> str:
    lines = [
        f"schema {report['schema']}: applied {len(report['applied'])}, target {report['target']}"
    ]
    if report["problem"]:
        lines.append(f"problem: {report['problem']}")
    for step in report["pending"]:
        kind = "breaking" if step["breaking"] else "safe"
        lines.append(f"  {step['id']} {step['name']} ({kind})")
        for p in step["blocked_by_pools"]:
            lines.append(f"    waits for pool {p['pool_id']} (version {p['version']})")
    if not report["pending"]:
        lines.append("  nothing pending")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    with connect(_database_url(args)) as conn:
        report = status_report(conn, Schema(args.schema), args.sweep_threshold)
    _print(report, args.json, _status_text)
    return 0


def _status_text(report: dict[str, Any]) -> str:
    lines = [f"schema {report['schema']}: {len(report['migrations'])} migration(s) applied"]
    for m in report["migrations"]:
        lines.append(f"  {m['id']} {m['name']} {'breaking' if m['breaking'] else 'safe'}")
    lines.append("pools:")
    for p in report["pools"]:
        live = "live" if p["live"] else "gone"
        lines.append(
            f"  {p['pool_id'][:8]} v{p['version']} {p['state']:<18} {live} "
            f"heartbeat {p['heartbeat_age_s']:.1f}s ago, running {p['running_jobs']}"
        )
    q = report["jobs"]
    lines.append(
        f"jobs: {q['runnable']} runnable, {q['scheduled']} scheduled, {q['running']} running, "
        f"{q['failed']} permanently failed"
    )
    return "\n".join(lines)


def cmd_unlock_orphans(args: argparse.Namespace) -> int:
    with connect(_database_url(args)) as conn:
        report = unlock_orphans(conn, Schema(args.schema), dry_run=args.dry_run)
    verb = "would release" if args.dry_run else "released"
    print(f"{verb} {len(report.jobs)} job(s) and {len(report.queues)} queue lock(s)")
    return 0


def cmd_add_job(args: argparse.Namespace) -> int:
    app = _app(args.app)
    if app is not None and args.task not in app.tasks:
        raise UsageError(
            f"unknown task {args.task!r}; the app defines: {', '.join(sorted(app.tasks))}"
        )
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--payload is not valid JSON: {exc}") from exc
    run_at = None
    if args.run_at:
        try:
            run_at = parse_timestamp(args.run_at)
        except ValueError as exc:
            raise UsageError(f"--run-at: {exc}") from exc
    spec = JobSpec(
        task=args.task,
        payload=payload,
        queue=args.queue,
        run_at=run_at,
        priority=args.priority,
        max_attempts=args.max_attempts,
        job_key=args.job_key,
    )
    with connect(_database_url(args)) as conn:
        job_id = add_job(conn, spec, Schema(args.schema))
    print(job_id)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    with connect(_database_url(args)) as conn:
        return jobs_cli.run(conn, Schema(args.schema), args)


def _print(data: dict[str, Any], as_json: bool, text: Callable[[dict[str, Any]], str]) -> None:
    print(json.dumps(data, default=str, indent=2) if as_json else text(data))


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "migrate": cmd_migrate,
    "status": cmd_status,
    "unlock-orphans": cmd_unlock_orphans,
    "add-job": cmd_add_job,
    "jobs": cmd_jobs,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=str(args.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    _stop_on_sigterm()
    try:
        return COMMANDS[args.command](args)
    except Terminated as exc:
        return _fail(ExitCode.TERMINATED, f"stopped by {exc} before finishing; nothing half-done")
    except FleetWorkerError as exc:  # the one tree: fleet_worker/errors.py
        return _fail(exc.exit_code, str(exc))
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        return _fail(ExitCode.USAGE, f"invalid settings: {problems}")


def _fail(code: ExitCode, message: str) -> int:
    """Say why on stderr and in the termination message (the pod's status shows it)."""
    print(f"fleet-worker: {message}", file=sys.stderr)
    write_termination_message(f"exit {int(code)} ({code.name}): {message}")
    return code


if __name__ == "__main__":
    sys.exit(main())
