"""The process agent and the real node side by side, in one run (`make bench-node`):

- image build: the project's images from the Dockerfiles, with the builder's layer cache
  as it is (warm after a first run; `--cold` empties it first: debootstrap and every layer);
- cluster start to a schedulable node, warm (binaries and images cached);
- pod creation to Ready, an httpGet readiness probe every second, median of 5;
- the demo story with 4 replicas under a steady stream: release 1 -> 2 (safe migration)
  and 2 -> 3 (breaking), rollout durations and the longest gap between completions, lost
  and twice-run jobs.

Prints a table and writes JSON (bench/results/backends.json by default). Root on Debian.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.tables import side_by_side
from localcluster.cluster import Cluster
from localcluster.images import Image, ImageTable
from localcluster.realnode.cluster import RealNodeCluster
from localcluster.realnode.images import cache_dir
from workerfleet_demo import run as demo
from workerfleet_dev.images import WORKER_IMAGE, node_archive

ROOT = Path(__file__).resolve().parents[1]
WEB = "bench.local/web"


def _pod(image: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": image,
                    "command": ["python3", "-m", "http.server", "8000"],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8000}, "periodSeconds": 1},
                }
            ]
        },
    }


def pod_ready_s(cluster: Cluster | RealNodeCluster, image: str, n: int = 5) -> list[float]:
    client = cluster.client()
    cluster.create_namespace("bench")
    out = []
    for i in range(n):
        t0 = time.monotonic()
        client.create("/api/v1/namespaces/bench/pods", _pod(image, f"web-{i}"))
        while True:
            pod = client.get(f"/api/v1/namespaces/bench/pods/web-{i}")
            conditions = (pod.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                break
            if time.monotonic() - t0 > 120:
                raise TimeoutError(f"pod web-{i} not Ready: {pod.get('status')}")
            time.sleep(0.02)
        out.append(time.monotonic() - t0)
    return out


def measure(backend: str, workdir: Path, archive: Path | None) -> dict[str, Any]:
    result: dict[str, Any] = {"backend": backend}
    cluster: Cluster | RealNodeCluster
    if backend == "node":
        assert archive is not None
        cluster = RealNodeCluster(workdir / "node", image_archives=[archive])
        image = WORKER_IMAGE
    else:
        table = ImageTable({WEB: Image(command=[sys.executable])})
        cluster = Cluster(workdir / "process", table)
        image = WEB
    t0 = time.monotonic()
    cluster.start()
    result["warm_start_s"] = round(time.monotonic() - t0, 2)
    try:
        ready = pod_ready_s(cluster, image)
        result["pod_ready_s_median"] = round(statistics.median(ready), 2)
        result["pod_ready_s_max"] = round(max(ready), 2)
    finally:
        cluster.stop()
    out = workdir / f"demo-{backend}"
    args = ["--no-live", "--replicas", "4", "--out", str(out)]
    code = demo.main([*args, "--real-node"] if backend == "node" else args)
    summary = json.loads((out / "summary.json").read_text())
    result.update(
        demo_exit=code,
        rollout_safe_s=summary["rollouts_s"].get("rollout 1 -> 2 (safe)"),
        rollout_breaking_s=summary["rollouts_s"].get("rollout 2 -> 3 (breaking)"),
        longest_gap_s=summary["longest_processing_gap_s"],
        jobs_completed=summary["jobs_completed"],
        jobs_lost=summary["jobs_lost"],
        jobs_completed_twice=summary["jobs_completed_twice"],
    )
    return result


ROWS = (
    ("image build (s)", "image_build_s"),
    ("cluster start, warm (s)", "warm_start_s"),
    ("pod creation to Ready, median / max (s)", "pod_ready"),
    ("safe rollout 1 -> 2, 4 replicas (s)", "rollout_safe_s"),
    ("breaking rollout 2 -> 3 (s)", "rollout_breaking_s"),
    ("longest gap between completions (s)", "longest_gap_s"),
    ("jobs completed / lost / run twice", "jobs"),
)


def table(results: list[dict[str, Any]]) -> str:
    def cell(r: dict[str, Any], key: str) -> str:
        if key == "pod_ready":
            return f"{r['pod_ready_s_median']} / {r['pod_ready_s_max']}"
        if key == "jobs":
            return f"{r['jobs_completed']} / {r['jobs_lost']} / {r['jobs_completed_twice']}"
        value = r.get(key)
        return "-" if value is None else str(value)

    return side_by_side(results, "backend", ROWS, cell)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="empty the image builder's cache")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "backends.json")
    args = parser.parse_args(argv)
    if args.cold:
        shutil.rmtree(cache_dir() / "docker", ignore_errors=True)
    t0 = time.monotonic()
    archive = node_archive(["demo"])
    build_s = round(time.monotonic() - t0, 1)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        for backend in ("process", "node"):
            results.append(measure(backend, Path(tmp), archive if backend == "node" else None))
    results[0]["image_build_s"] = None  # the process agent runs no images
    results[1]["image_build_s"] = f"{build_s} ({'cold' if args.cold else 'cache as found'})"
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(table(results))
    return 0 if all(r["demo_exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
