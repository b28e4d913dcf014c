"""`python -m bench.peers`: every peer's measures, as a table and as JSON.

Without --url an embedded PostgreSQL is started for the run (as bench/worker_throughput.py
does). PostgreSQL's CPU is reported beside the worker's when the server runs on this machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.peers import PEERS, PeerResult, install_all, postgres_cpu_sampler, run_peer


@contextmanager
def database(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from workerfleet_dev.postgres import LocalPostgres

    with LocalPostgres() as pg:
        yield pg.url


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.{digits}f}"


def table(results: list[PeerResult], versions: dict[str, str]) -> str:
    header = (
        f"{'peer':<22} {'measure':<15} {'setting':<80} {'value':>10} {'unit':<7} "
        f"{'cpu s/10k':>9} {'pg s/10k':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        peer = f"{r.name} {versions.get(r.name, '')}".strip()
        lines.append(
            f"{peer:<22} {r.measure:<15} {r.setting:<80} {_fmt(r.value):>10} {r.unit:<7} "
            f"{_fmt(r.cpu_s_per_10k, 2):>9} {_fmt(r.db_cpu_s_per_10k, 2):>9}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="PostgreSQL URL (default: an embedded server)")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per processing run")
    parser.add_argument("--single", type=int, default=2_000, help="jobs for single enqueue")
    parser.add_argument("--latency-jobs", type=int, default=500, help="0 skips latency")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    names = [n for n in args.peers.split(",") if n]
    unknown = set(names) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")

    # SIGTERM unwinds like Ctrl-C, so workers are stopped and databases dropped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    versions = install_all()
    results: list[PeerResult] = []
    with database(args.url) as url:
        db_cpu = postgres_cpu_sampler(url)
        for name in names:
            print(f"measuring {name} {versions[name]} ...", file=sys.stderr, flush=True)
            results.extend(
                run_peer(
                    name,
                    url,
                    args.jobs,
                    args.single,
                    latency_jobs=args.latency_jobs,
                    db_cpu=db_cpu,
                )
            )
    report: dict[str, Any] = {
        "jobs": args.jobs,
        "single": args.single,
        "latency_jobs": args.latency_jobs,
        "cpu_count": os.cpu_count(),
        "versions": {n: versions[n] for n in names},
        "results": [asdict(r) for r in results],
    }
    print(table(results, versions))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
