"""Command-line entry points.

`up` starts `serve` detached; `serve` runs the control plane and node agent and records
every pid in <state-dir>/state.json, so `down` stops exactly those processes by pid.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from localcluster import bins, procs


def default_state_dir() -> Path:
    env = os.environ.get("LOCALCLUSTER_STATE_DIR")
    return Path(env) if env else bins.cache_root().parent / "localcluster"


def _read_state(state_dir: Path) -> dict[str, object] | None:
    try:
        data: dict[str, object] = json.loads((state_dir / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data


def _is_ours(pid: int, marker: str) -> bool:
    """The pid still runs the program we recorded (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return marker in cmdline


def cmd_bins(args: argparse.Namespace) -> int:
    found = bins.ensure()
    for path in (found.etcd, found.kube_apiserver, found.kube_controller_manager):
        print(path)
    if args.node:
        for path in bins.ensure_node().values():
            print(path)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir
    state = _read_state(state_dir)
    if state and procs.alive(int(str(state["pid"]))) and _is_ours(int(str(state["pid"])), "serve"):
        print(state["kubeconfig"])
        return 0
    bins.ensure()  # build (with progress) in the foreground, not inside the detached server
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "state.json").unlink(missing_ok=True)
    argv = [sys.executable, "-m", "localcluster", "serve", "--state-dir", str(state_dir)]
    argv += ["--nodes", str(args.nodes)]
    if args.images:
        argv += ["--images", str(Path(args.images).resolve())]
    # Detached on purpose: it must outlive this command (`down` stops it by pid).
    server = procs.start(argv, state_dir / "serve.log", env=dict(os.environ), die_with_parent=False)
    t0 = time.monotonic()
    while time.monotonic() - t0 < args.timeout:
        state = _read_state(state_dir)
        if state and state.get("ready"):
            print(state["kubeconfig"])
            print(f"ready in {time.monotonic() - t0:.1f}s", file=sys.stderr)
            return 0
        if server.poll() is not None:
            break
        time.sleep(0.2)
    print((state_dir / "serve.log").read_text()[-3000:], file=sys.stderr)
    procs.stop(server.pid)
    return 1


def cmd_serve(args: argparse.Namespace) -> int:
    from localcluster.cluster import Cluster
    from localcluster.images import ImageTable

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    state_dir: Path = args.state_dir
    workdir = state_dir / "cluster"
    shutil.rmtree(workdir, ignore_errors=True)
    images = ImageTable.load(Path(args.images)) if args.images else ImageTable()
    nodes = tuple(f"localnode-{i}" for i in range(args.nodes))
    cluster = Cluster(workdir, images, nodes=nodes)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    cluster.start()
    try:
        while True:
            _write_state(state_dir, cluster, ready=True)
            if stop.wait(2):
                break
    finally:
        cluster.stop()
        (state_dir / "state.json").unlink(missing_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _write_state(state_dir: Path, cluster: object, *, ready: bool) -> None:
    from localcluster.cluster import Cluster

    assert isinstance(cluster, Cluster)
    cp = cluster.control_plane
    state = {
        "pid": os.getpid(),
        "ready": ready,
        "kubeconfig": str(cluster.kubeconfig),
        "server": cp.server,
        "workdir": str(cluster.workdir),
        # name -> pid; `down` only kills a pid whose command line still contains the name.
        "processes": cp.pids,
        "pod_pids": cluster.agent.pids(),
    }
    tmp = state_dir / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.rename(state_dir / "state.json")


def cmd_down(args: argparse.Namespace) -> int:
    state = _read_state(args.state_dir)
    if state is None:
        print("localcluster: not running", file=sys.stderr)
        return 0
    pid = int(str(state["pid"]))
    if _is_ours(pid, "serve"):
        # The server stops pods then the control plane, in order, and removes its state.
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while procs.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    # Whatever survived (the server was killed, say): stop each recorded pid that is still ours.
    processes = state.get("processes")
    if isinstance(processes, dict):
        for name, ppid in processes.items():
            if _is_ours(int(ppid), str(name)):
                procs.stop(int(ppid))
    pod_pids = state.get("pod_pids")
    if isinstance(pod_pids, list):
        for ppid in pod_pids:
            if procs.alive(int(ppid)):
                procs.stop(int(ppid), grace=2)
    if procs.alive(pid) and _is_ours(pid, "serve"):
        procs.stop(pid)
    (args.state_dir / "state.json").unlink(missing_ok=True)
    shutil.rmtree(Path(str(state.get("workdir", ""))), ignore_errors=True)
    print("localcluster: stopped", file=sys.stderr)
    return 0


def cmd_kubeconfig(args: argparse.Namespace) -> int:
    state = _read_state(args.state_dir)
    if state is None:
        print("localcluster: not running (python -m localcluster up)", file=sys.stderr)
        return 1
    print(state["kubeconfig"])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster")
    parser.add_argument("--state-dir", type=Path, default=default_state_dir())
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_bins = sub.add_parser(
        "bins", help="find or build etcd/kube-apiserver/kube-controller-manager"
    )
    p_bins.add_argument(
        "--node", action="store_true", help="also kubelet and kube-scheduler (the real node)"
    )
    for name, helptext in (("up", "start in the background"), ("serve", "run in the foreground")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--images", help="image table (YAML or JSON), see localcluster.images")
        p.add_argument("--nodes", type=int, default=1, help="number of Node objects")
        p.add_argument("--timeout", type=float, default=120.0)
        p.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS)
    sub.add_parser("down", help="stop what `up` started").add_argument(
        "--state-dir", type=Path, default=argparse.SUPPRESS
    )
    sub.add_parser("kubeconfig", help="print the admin kubeconfig path").add_argument(
        "--state-dir", type=Path, default=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    handlers = {
        "bins": cmd_bins,
        "up": cmd_up,
        "serve": cmd_serve,
        "down": cmd_down,
        "kubeconfig": cmd_kubeconfig,
    }
    return handlers[args.cmd](args)
