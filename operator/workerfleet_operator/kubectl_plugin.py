"""`kubectl workerfleet`: status, pause, resume, approve, rollback, plan and jobs for a fleet.

Exit codes, for scripts: 0 ok (for `status`: the fleet is Ready), 1 error (API, database),
2 usage, 3 not ready yet (rolling out, migrating, paused), 4 failed or refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from fleet_worker import jobs_cli
from fleet_worker.db import Schema, connect
from fleet_worker.errors import AdminError, DatabaseUnavailableError
from workerfleet_operator import builders
from workerfleet_operator.cache import ChildCache, SecretCache, api_lister, read_database_url
from workerfleet_operator.models import GROUP, PLURAL, VERSION, WorkerFleetSpec, WorkerFleetStatus
from workerfleet_operator.observation import MigrationInfo, Observation
from workerfleet_operator.observe import Databases, observe
from workerfleet_operator.planner import (
    APPROVAL_ANNOTATION,
    Plan,
    action_label,
    blocking_migrations,
    catalog_of,
    plan,
)
from workerfleet_operator.reconcile import previous_status

OK, ERROR, USAGE, NOT_READY, FAILED = 0, 1, 2, 3, 4


class PluginError(Exception):
    def __init__(self, message: str, code: int = ERROR) -> None:
        super().__init__(message)
        self.code = code


class Kube:
    def __init__(self, namespace: str | None) -> None:
        try:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        api = client.ApiClient()
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace or self._default_namespace()

    @staticmethod
    def _default_namespace() -> str:
        try:
            _, active = config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
            return str(active["context"].get("namespace") or "default")
        except (config.ConfigException, KeyError, TypeError):
            return "default"

    def fleet(self, name: str) -> dict[str, Any]:
        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            )  # type: ignore[assignment]
        except ApiException as exc:
            if exc.status == 404:
                raise PluginError(f"workerfleet {self.namespace}/{name} not found") from exc
            raise PluginError(f"cannot read workerfleet {name}: {exc.reason}") from exc
        return obj

    def patch(self, name: str, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name,
                                                   body)  # fmt: skip


def _look(kube: Kube, fleet: dict[str, Any]) -> tuple[WorkerFleetSpec, Observation]:
    spec = WorkerFleetSpec.model_validate(fleet["spec"])
    meta = fleet["metadata"]
    dbs = Databases()
    children = ChildCache(api_lister(kube.core, kube.batch), prime_every_s=0)
    try:
        obs, _ = observe(core=kube.core, children=children, secrets=SecretCache(kube.core, 0),
                         dbs=dbs, name=meta["name"], namespace=kube.namespace, spec=spec,
                         annotations=meta.get("annotations") or {})  # fmt: skip
    finally:
        dbs.close()
    return spec, obs


def _next_plan(fleet: dict[str, Any], spec: WorkerFleetSpec, obs: Observation) -> Plan:
    meta = fleet["metadata"]
    return plan(
        name=meta["name"], spec=spec, generation=int(meta.get("generation") or 0),
        revision=builders.revision(meta["name"], spec, meta["namespace"]), obs=obs,
        now=datetime.now(UTC), namespace=meta["namespace"],
        previous=previous_status(fleet.get("status")),
    )  # fmt: skip


def status_exit(status: WorkerFleetStatus, generation: int) -> int:
    conds = {c.type: c for c in status.conditions}
    ready, progressing = conds.get("Ready"), conds.get("Progressing")
    if ready and ready.status == "True" and ready.observed_generation == generation:
        return OK
    if progressing and progressing.status == "False":
        return FAILED
    return NOT_READY


def render_status(kube: Kube, fleet: dict[str, Any]) -> tuple[str, int]:
    spec, obs = _look(kube, fleet)
    status = previous_status(fleet.get("status"))
    meta = fleet["metadata"]
    lines = [
        f"WorkerFleet {kube.namespace}/{meta['name']}: {status.phase} - {status.message}",
        f"  version {spec.version} (running: {status.current_version or '-'}), "
        f"ready {status.ready_replicas}/{spec.replicas}, paused {spec.paused}",
        f"  schema applied: {', '.join(m.id for m in obs.applied) or '-'}",
        f"  pending: {', '.join(status.schema_.pending) or '-'}"
        + (f" (breaking: {', '.join(status.schema_.pending_breaking)})"
           if status.schema_.pending_breaking else ""),
        "conditions:",
    ]  # fmt: skip
    for c in status.conditions:
        lines.append(f"  {c.type:<18} {c.status:<7} {c.reason:<26} {c.message}")
    lines.append("pods:")
    for p in sorted(obs.pods, key=lambda p: p.created_at):
        state = "terminating" if p.terminating else ("ready" if p.ready else p.phase.lower())
        lines.append(f"  {p.name:<32} v{p.version:<8} {state:<12} restarts {p.restarts}")
    lines.append("pools (live or recent):")
    for pool in sorted(obs.pools, key=lambda p: p.started_at)[-12:]:
        where = pool.pod_name or "outside Kubernetes"
        live = "live" if pool.live else "gone"
        lines.append(f"  {pool.pool_id[:8]} v{pool.version:<8} {pool.state:<18} {live:<4} "
                     f"{where}")  # fmt: skip
    events = kube.core.list_namespaced_event(
        kube.namespace, field_selector=f"involvedObject.name={meta['name']}"
    ).items
    events.sort(key=lambda e: str(e.last_timestamp or e.event_time or ""))
    lines.append("recent events:")
    for e in events[-8:]:
        lines.append(f"  {e.type:<8} {e.reason:<20} {e.message}")
    return "\n".join(lines), status_exit(status, int(meta.get("generation") or 0))


def cmd_status(kube: Kube, args: argparse.Namespace) -> int:
    while True:
        text, code = render_status(kube, kube.fleet(args.name))
        if not args.watch:
            print(text)
            return code
        print("\033[2J\033[H" + text, flush=True)
        time.sleep(args.interval)


def cmd_pause(kube: Kube, args: argparse.Namespace, paused: bool) -> int:
    kube.fleet(args.name)
    kube.patch(args.name, {"spec": {"paused": paused}})
    print(f"workerfleet {args.name} {'paused' if paused else 'resumed'}")
    return OK


def cmd_approve(kube: Kube, args: argparse.Namespace) -> int:
    fleet = kube.fleet(args.name)
    pending = previous_status(fleet.get("status")).schema_.pending_breaking
    migration = args.migration or (pending[0] if pending else None)
    if migration is None:
        raise PluginError(f"workerfleet {args.name} has no pending breaking migration", FAILED)
    if pending and migration not in pending:
        raise PluginError(f"{migration} is not pending; pending breaking: {', '.join(pending)}",
                          FAILED)  # fmt: skip
    kube.patch(args.name, {"metadata": {"annotations": {APPROVAL_ANNOTATION: migration}}})
    print(f"approved breaking migration {migration} for workerfleet {args.name}")
    return OK


def previous_version(obs: Observation, fleet: str, current: str) -> str | None:
    """The newest version other than `current` that ran pools for this fleet."""
    ran = [p for p in obs.pools if p.fleet == fleet and p.version != current]
    return max(ran, key=lambda p: p.started_at).version if ran else None


def cmd_rollback(kube: Kube, args: argparse.Namespace) -> int:
    fleet = kube.fleet(args.name)
    spec, obs = _look(kube, fleet)
    fleet_key = builders.fleet_id(kube.namespace, args.name)
    target = args.to or previous_version(obs, fleet_key, spec.version)
    if target is None:
        raise PluginError("no earlier version of this fleet is recorded; pass --to", USAGE)
    catalog = catalog_of(obs, target, [])
    blocked = blocking_migrations(catalog, obs.applied)
    if blocked:
        raise PluginError(
            f"refusing to roll back to {target}: the database holds breaking migration(s) "
            f"{', '.join(blocked)} that {target} does not know",
            FAILED,
        )
    if catalog is None:
        print(f"note: version {target} never registered a pool here; the operator will check "
              "it when its first pod starts", file=sys.stderr)  # fmt: skip
    kube.patch(args.name, {"spec": {"version": target}})
    print(f"workerfleet {args.name}: version {spec.version} -> {target}")
    return OK


def _describe(m: MigrationInfo) -> str:
    return f"{m.id} ({'breaking' if m.breaking else 'safe'})"


def cmd_plan(kube: Kube, args: argparse.Namespace) -> int:
    fleet = kube.fleet(args.name)
    spec, obs = _look(kube, fleet)
    if args.version:
        spec = spec.model_copy(update={"version": args.version})
    catalog = catalog_of(obs, spec.version, [])
    applied = {m.id for m in obs.applied}
    blocked = blocking_migrations(catalog, obs.applied)
    pending = [m for m in catalog or () if m.id not in applied]
    steps: list[dict[str, Any]] = []
    for m in pending:
        drain = [p for p in obs.pools if p.live and not p.knows(m.id)] if m.breaking else []
        steps.append({"migration": m.id, "breaking": m.breaking,
                      "must_drain": [{"pool": p.pool_id, "version": p.version,
                                      "pod": p.pod_name} for p in drain]})  # fmt: skip
    next_step = _next_plan(fleet, spec, obs)
    report = {
        "fleet": args.name,
        "version": spec.version,
        "catalog_known": catalog is not None,
        "refused": blocked,
        "pending": steps,
        "next_action": action_label(next_step.action),
        "next_reason": next_step.status.message,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"plan for workerfleet {args.name} at version {spec.version}:")
        if catalog is None:
            print("  version not seen yet: its first pod will register its migrations")
        if blocked:
            print(f"  REFUSED: the database holds {', '.join(blocked)}, unknown to it")
        for step in steps:
            kind = "breaking" if step["breaking"] else "safe"
            print(f"  {step['migration']} ({kind})")
            for p in step["must_drain"]:
                print(
                    f"    waits for pool {p['pool'][:8]} (version {p['version']}, "
                    f"{p['pod'] or 'outside Kubernetes'})"
                )
        if catalog is not None and not steps:
            print("  no pending migrations")
        print(f"  next: {report['next_action']}: {report['next_reason']}")
    return FAILED if blocked else OK


def cmd_jobs(kube: Kube, args: argparse.Namespace) -> int:
    """`fleet-worker jobs` against the fleet's database, found through its Secret (the
    caller's own RBAC decides whether they may read it)."""
    spec = WorkerFleetSpec.model_validate(kube.fleet(args.name)["spec"])
    ref = spec.database.secret_ref
    try:
        url = read_database_url(kube.core, kube.namespace, ref.name, ref.key)
    except LookupError as exc:
        raise PluginError(str(exc)) from exc
    try:
        with connect(url) as conn:
            return jobs_cli.run(conn, Schema(spec.schema_name), args)
    except AdminError as exc:
        raise PluginError(str(exc), USAGE) from exc
    except DatabaseUnavailableError as exc:
        raise PluginError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl workerfleet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-n", "--namespace", default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="fleet, pods, pools, schema, conditions, events")
    st.add_argument("name")
    st.add_argument("-w", "--watch", action="store_true")
    st.add_argument("--interval", type=float, default=2.0)
    for cmd in ("pause", "resume"):
        sub.add_parser(cmd, help=f"{cmd} rollouts").add_argument("name")
    ap = sub.add_parser("approve", help="approve the pending breaking migration")
    ap.add_argument("name")
    ap.add_argument("migration", nargs="?", help="default: the first pending breaking one")
    rb = sub.add_parser("rollback", help="back to the previous version, if the schema allows")
    rb.add_argument("name")
    rb.add_argument("--to", default=None, help="a specific version")
    pl = sub.add_parser("plan", help="what the next rollout would do")
    pl.add_argument("name")
    pl.add_argument("--version", default=None, help="plan for this version instead")
    pl.add_argument("--json", action="store_true")
    jobs = sub.add_parser("jobs", help="the fleet's jobs: list, show, history, retry, ...")
    jobs.add_argument("name")
    jobs_cli.add_arguments(jobs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        kube = Kube(args.namespace)
        if args.command == "status":
            return cmd_status(kube, args)
        if args.command in ("pause", "resume"):
            return cmd_pause(kube, args, args.command == "pause")
        if args.command == "approve":
            return cmd_approve(kube, args)
        if args.command == "rollback":
            return cmd_rollback(kube, args)
        if args.command == "jobs":
            return cmd_jobs(kube, args)
        return cmd_plan(kube, args)
    except PluginError as exc:
        print(f"kubectl-workerfleet: {exc}", file=sys.stderr)
        return exc.code
    except (ApiException, config.ConfigException) as exc:
        print(f"kubectl-workerfleet: {exc}", file=sys.stderr)
        return ERROR
    except KeyboardInterrupt:
        return OK


if __name__ == "__main__":
    sys.exit(main())
