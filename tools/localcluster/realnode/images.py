"""Images for the real node, built on this machine: no registry can be reached.

`ImageBuilder` runs a private dockerd (Debian's docker.io) only to build images from
Dockerfiles. Its data root lives in the per-user cache, so layers built once are reused by
the next run and by CI on the same machine; it listens on a socket of its own, makes no
bridge and writes no iptables rules, and every build runs with `--network none`, so a build
can never reach out. Built images are saved to an archive and imported into the node's
containerd (`containerd.Containerd.import_images`): pods pull nothing.

The base image is a Debian root made by debootstrap with Python 3.11; the sandbox (pause)
image is a static binary compiled here from pause/pause.c.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from localcluster import bins, procs
from localcluster.procs import Lifecycle
from localcluster.realnode.prereqs import Tools

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("LOCALCLUSTER_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")
PAUSE_DIR = Path(__file__).parent / "pause"
PAUSE_IMAGE = "localcluster.local/pause:3.10"


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


# The base image's tag names what is in it, so a change of suite or packages is a new image.
BASE_IMAGE = f"localcluster.local/debian-python:{DEBIAN_SUITE}-{_key(*BASE_PACKAGES)}"


def cache_dir() -> Path:
    return bins.cache_root().parent


class BuildError(RuntimeError):
    pass


class ImageBuilder(Lifecycle):
    """A private dockerd for `docker build`; `with ImageBuilder(tools) as b: b.build(...)`."""

    def __init__(self, tools: Tools, data_root: Path | None = None) -> None:
        self.tools = tools
        self.data_root = data_root or cache_dir() / "docker"
        # Socket paths must stay short (108 bytes), and exec state belongs on /run.
        self.run_dir = Path("/run/workerfleet-builder")
        self.socket = self.run_dir / "docker.sock"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._stop_stale()
        log = self.data_root.parent / "dockerd.log"
        self._proc = procs.start(
            [
                str(self.tools.programs["dockerd"]),
                f"--data-root={self.data_root}",
                f"--exec-root={self.run_dir / 'exec'}",
                f"--pidfile={self.run_dir / 'dockerd.pid'}",
                f"--host=unix://{self.socket}",
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--ip-forward=false",
                "--storage-driver=overlay2",
                "--log-level=warn",
            ],
            log,
        )
        deadline = time.monotonic() + 60
        while self.docker("info", check=False).returncode != 0:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                self.stop()
                raise BuildError(f"dockerd did not start (log {log}):\n{tail}")
            time.sleep(0.3)

    def _stop_stale(self) -> None:
        """A builder left by a killed run holds the socket and the data root's lock."""
        pidfile = self.run_dir / "dockerd.pid"
        with contextlib.suppress(FileNotFoundError, ValueError):
            procs.stop(int(pidfile.read_text().strip()), grace=10)
        pidfile.unlink(missing_ok=True)

    def stop(self) -> None:
        if self._proc is not None:
            procs.stop(self._proc.pid, grace=20)
            self._proc.wait()
            self._proc = None

    def docker(
        self, *args: str, check: bool = True, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, "DOCKER_BUILDKIT": "0", "DOCKER_HOST": f"unix://{self.socket}"}
        proc = subprocess.run(
            [str(self.tools.docker), *args], env=env, capture_output=True, input=stdin, check=False
        )
        if check and proc.returncode != 0:
            raise BuildError(
                f"docker {' '.join(args[:3])} failed ({proc.returncode}):\n"
                + (proc.stdout + proc.stderr).decode(errors="replace")[-4000:]
            )
        return proc

    def has(self, tag: str) -> bool:
        return self.docker("image", "inspect", tag, check=False).returncode == 0

    def build(
        self,
        tag: str,
        *,
        dockerfile: Path,
        context: Path,
        build_args: dict[str, str] | None = None,
    ) -> None:
        args = ["build", "--network", "none", "-f", str(dockerfile), "-t", tag]
        for name, value in (build_args or {}).items():
            args += ["--build-arg", f"{name}={value}"]
        t0 = time.monotonic()
        self.docker(*args, str(context))
        _log(f"built {tag} in {time.monotonic() - t0:.1f}s")

    def save(self, tags: Sequence[str], archive: Path) -> Path:
        self.docker("save", "-o", str(archive), *tags)
        return archive

    # -- the two images every node needs --------------------------------------------------
    def ensure_base(self) -> str:
        """Debian with Python 3.11 from debootstrap (about a minute, once per cache)."""
        if not self.has(BASE_IMAGE):
            t0 = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="wf-rootfs-", dir=cache_dir()) as tmp:
                root = Path(tmp) / "root"
                _log(
                    f"debootstrap {DEBIAN_SUITE} ({', '.join(BASE_PACKAGES)}) from {DEBIAN_MIRROR}"
                )
                proc = subprocess.run(
                    [
                        str(self.tools.programs["debootstrap"]),
                        "--variant=minbase",
                        f"--include={','.join(BASE_PACKAGES)}",
                        DEBIAN_SUITE,
                        str(root),
                        DEBIAN_MIRROR,
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if proc.returncode != 0:
                    raise BuildError(f"debootstrap failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
                for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                    shutil.rmtree(root / junk, ignore_errors=True)
                tar = subprocess.run(
                    ["tar", "-C", str(root), "-c", "."], capture_output=True, check=True
                ).stdout
                self.docker(
                    "import",
                    "--change",
                    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--change",
                    'CMD ["python3"]',
                    "-",
                    BASE_IMAGE,
                    stdin=tar,
                )
            _log(f"base image {BASE_IMAGE} in {time.monotonic() - t0:.1f}s")
        return BASE_IMAGE

    def ensure_pause(self) -> str:
        if not self.has(PAUSE_IMAGE):
            with tempfile.TemporaryDirectory(prefix="wf-pause-") as tmp:
                ctx = Path(tmp)
                subprocess.run(
                    [str(self.tools.programs["gcc"]), "-static", "-O2", "-Wall",
                     "-o", str(ctx / "pause"), str(PAUSE_DIR / "pause.c")],
                    check=True, capture_output=True,
                )  # fmt: skip
                self.build(PAUSE_IMAGE, dockerfile=PAUSE_DIR / "Dockerfile", context=ctx)
        return PAUSE_IMAGE


def _log(msg: str) -> None:
    print(f"[localcluster images] {msg}", file=sys.stderr, flush=True)
