"""The PNG chart of `make bench`: each system's best figure per measure, as a ratio to
Graphile Worker's, from bench/results/compare.json. matplotlib runs in a venv of its own in
~/.cache/workerfleet/peers/ (the product does not depend on it).

    python -m bench.chart [--json PATH] [--png PATH]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from bench.peers.install import CACHE, MARKER

MATPLOTLIB_VERSION = "3.10.7"
ROOT = Path(__file__).resolve().parents[1]

# Runs inside the chart venv: argv = json path, png path.
_PLOT = r"""
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

data = json.load(open(sys.argv[1]))
measures = ["processing", "processing-c10", "bulk-enqueue", "single-enqueue",
            "latency-p50", "latency-p99"]
labels = {"processing": "processing\n(best setting)",
          "processing-c10": "processing\n(concurrency 10)",
          "bulk-enqueue": "bulk\nenqueue", "single-enqueue": "single\nenqueue",
          "latency-p50": "latency p50\n(lower is better)",
          "latency-p99": "latency p99\n(lower is better)"}
systems = sorted({f["name"] for f in data["figures"]}, key=lambda s: (s != "fleet-worker", s))

def best(system, measure):
    xs = [f["value"] for f in data["figures"] if f["name"] == system and f["measure"] == measure]
    if not xs:
        return None
    return min(xs) if measure.startswith("latency") else max(xs)

fig, ax = plt.subplots(figsize=(11, 4.8))
width = 0.8 / len(systems)
for i, system in enumerate(systems):
    ratios = []
    for m in measures:
        mine, base = best(system, m), best("graphile-worker", m)
        ratios.append(mine / base if mine and base else 0)
    xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(measures))]
    ax.bar(xs, ratios, width, label=system)
ax.axhline(1.0, color="black", linewidth=0.8)
ax.set_xticks(range(len(measures)), [labels[m] for m in measures], fontsize=8)
ax.set_ylabel("ratio to Graphile Worker")
ax.set_title(f"job queues on one PostgreSQL, {data.get('cpu_count')} cores, "
             f"{data.get('jobs')} no-op jobs (make bench)")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
"""


def chart_python() -> Path:
    venv = CACHE / f"chart-matplotlib-{MATPLOTLIB_VERSION}"
    python = venv / "bin" / "python"
    if not (venv / MARKER).exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"matplotlib=={MATPLOTLIB_VERSION}"],
            check=True,
        )
        (venv / MARKER).write_text(MATPLOTLIB_VERSION)
    return python


def render(json_path: Path, png_path: Path) -> Path:
    png_path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(chart_python()), "-c", _PLOT, str(json_path), str(png_path)], check=True)
    return png_path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/compare.json")
    parser.add_argument("--png", type=Path, default=ROOT / "bench/results/compare.png")
    args = parser.parse_args()
    print(render(args.json, args.png))
    return 0


if __name__ == "__main__":
    sys.exit(main())
