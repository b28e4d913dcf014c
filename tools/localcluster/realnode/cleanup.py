"""Remove everything a real node made, whether it stopped cleanly or its run was killed:
container processes, mounts (rootfs, volumes, network namespaces), the bridge and the
iptables chain, cgroups and files. Idempotent: `start` runs it first, `stop` runs it last."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from localcluster.realnode import network
from localcluster.realnode.kubelet import cgroup_dirs
from localcluster.realnode.layout import Layout


def _cgroup_pids(lay: Layout) -> set[int]:
    pids: set[int] = set()
    for top in cgroup_dirs(lay.cgroup_root):
        if not top.is_dir():
            continue
        for procs_file in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(x) for x in procs_file.read_text().split())
    return pids


def _pids_mentioning(root: Path) -> set[int]:
    """Processes whose command line names our root: shims, kubelet, containerd."""
    needle = str(root).rstrip("/").encode() + b"/"
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
    return found


def kill_all(lay: Layout, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while pids := _cgroup_pids(lay) | _pids_mentioning(lay.root):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes would not die: {sorted(pids)}")
        time.sleep(0.1)


def mounts_under(root: Path) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix) or point == str(root):
            out.append(point)
    return out


def unmount_all(root: Path) -> None:
    for _ in range(5):
        points = mounts_under(root)
        if not points:
            return
        # Deepest first; lazy so a busy mount (a dying process) does not block the rest.
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    if points := mounts_under(root):
        raise RuntimeError(f"could not unmount: {points[:5]}")


def remove_cgroups(lay: Layout) -> None:
    for top in cgroup_dirs(lay.cgroup_root):
        if not top.is_dir():
            continue
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def cleanup(lay: Layout) -> None:
    kill_all(lay)
    unmount_all(lay.root)
    network.teardown(lay)
    remove_cgroups(lay)
    shutil.rmtree(lay.root, ignore_errors=True)


def leftovers(lay: Layout) -> list[str]:
    """What would break the next run; empty after `cleanup`."""
    found = network.leftovers(lay)
    found += [f"mount {m}" for m in mounts_under(lay.root)]
    pids = _cgroup_pids(lay) | _pids_mentioning(lay.root)
    found += [f"process {pid}" for pid in sorted(pids)]
    found += [f"cgroup {d}" for d in cgroup_dirs(lay.cgroup_root) if d.exists()]
    if lay.root.exists():
        found.append(f"directory {lay.root}")
    return found
