"""What the real node needs from this machine, checked up front so a missing piece is named
with the Debian package that provides it instead of failing deep inside containerd."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

# Program -> the Debian package that installs it (`make node-prereqs` installs them all).
PROGRAMS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "runc": "runc",
    "dockerd": "docker.io",
    "iptables": "iptables",
    "ip": "iproute2",
    "debootstrap": "debootstrap",
    "gcc": "gcc",
    "mount": "mount",
}
# The docker CLI that belongs to Debian's dockerd: a newer client elsewhere on PATH defaults
# to BuildKit, which this daemon does not carry.
DOCKER_CLI = Path("/usr/bin/docker")
CNI_DIRS = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))
CNI_PLUGINS = ("bridge", "host-local", "loopback")
PACKAGES = sorted({*PROGRAMS.values(), "containernetworking-plugins", "libc6-dev"})


class MissingPrerequisite(RuntimeError):
    pass


@dataclass(frozen=True)
class Tools:
    programs: dict[str, Path]
    docker: Path
    cni_bin: Path


def check() -> Tools:
    """Every program the real node runs, or one error listing all that are missing."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("must run as root (the kubelet, containerd and CNI need it)")
    found: dict[str, Path] = {}
    for program, package in PROGRAMS.items():
        path = shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        if path is None:
            problems.append(f"{program} not found (Debian package {package})")
        else:
            found[program] = Path(path)
    if not os.access(DOCKER_CLI, os.X_OK):
        problems.append(f"{DOCKER_CLI} not found (Debian package docker.io)")
    cni = next((d for d in CNI_DIRS if all((d / p).exists() for p in CNI_PLUGINS)), None)
    if cni is None:
        problems.append(
            f"CNI plugins {', '.join(CNI_PLUGINS)} not found in "
            f"{' or '.join(map(str, CNI_DIRS))} (Debian package containernetworking-plugins)"
        )
    if not Path("/sys/fs/cgroup").is_dir():
        problems.append("no /sys/fs/cgroup: the kubelet needs cgroups")
    if problems:
        raise MissingPrerequisite(
            "the real node cannot start on this machine:\n  - "
            + "\n  - ".join(problems)
            + f"\nInstall with `make node-prereqs` (apt-get install {' '.join(PACKAGES)})."
        )
    assert cni is not None
    return Tools(found, DOCKER_CLI, cni)
