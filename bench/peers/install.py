"""Install the peer job queues into a per-user cache, never into the project's environment.

Graphile Worker comes from npm into `~/.cache/workerfleet/peers/graphile-worker-<version>/`;
pgqueuer and procrastinate come from PyPI into one venv,
`~/.cache/workerfleet/peers/pyvenv-<hash of the pins>/`. Each directory gets a marker file
only after its install succeeded, so an interrupted install is redone on the next run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

CACHE = Path.home() / ".cache" / "workerfleet" / "peers"
MARKER = ".installed"

# Newest 0.16/0.17/0.18 release on npm when this was written. Its package.json asks for
# Node >= 22.18 but it runs on the Node 20 of our machines (npm only warns, EBADENGINE).
GRAPHILE_WORKER_VERSION = "0.18.0"

PGQUEUER_VERSION = "1.6.0"
PROCRASTINATE_VERSION = "3.10.0"
# The drivers: pgqueuer runs on asyncpg (its default), procrastinate on psycopg 3.
ASYNCPG_VERSION = "0.32.0"
PSYCOPG_VERSION = "3.3.9"

PYTHON_PINS = (
    f"pgqueuer=={PGQUEUER_VERSION}",
    f"procrastinate=={PROCRASTINATE_VERSION}",
    f"asyncpg=={ASYNCPG_VERSION}",
    f"psycopg[binary,pool]=={PSYCOPG_VERSION}",
)


class PeerInstallError(RuntimeError):
    pass


def _run(argv: list[str], cwd: Path) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PeerInstallError(
            f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}"
            f"\n{proc.stderr[-4000:]}"
        )


def _fresh(target: Path) -> Path:
    """An empty staging directory beside `target`, renamed into place once installed."""
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def graphile_dir() -> Path:
    return CACHE / f"graphile-worker-{GRAPHILE_WORKER_VERSION}"


def install_graphile() -> Path:
    """The directory whose node_modules holds the pinned graphile-worker."""
    target = graphile_dir()
    if (target / MARKER).exists():
        return target
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise PeerInstallError("graphile-worker needs node and npm on PATH")
    staging = _fresh(target)
    (staging / "package.json").write_text(
        json.dumps({"name": "workerfleet-peer-graphile", "private": True}) + "\n"
    )
    _run(
        ["npm", "install", "--no-audit", "--no-fund", f"graphile-worker@{GRAPHILE_WORKER_VERSION}"],
        staging,
    )
    (staging / MARKER).write_text(GRAPHILE_WORKER_VERSION + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def pyvenv_dir() -> Path:
    digest = hashlib.sha256("\n".join(sorted(PYTHON_PINS)).encode()).hexdigest()[:12]
    return CACHE / f"pyvenv-{digest}"


def pyvenv_python() -> Path:
    return pyvenv_dir() / "bin" / "python"


def install_pyvenv() -> Path:
    """The python of a venv holding the pinned pgqueuer and procrastinate."""
    target = pyvenv_dir()
    if (target / MARKER).exists():
        return target / "bin" / "python"
    python = shutil.which("python3.11")
    if python is None:
        raise PeerInstallError("the Python peers need python3.11 on PATH")
    # A venv's scripts carry its absolute path: build it in place, mark it when complete.
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    _run([python, "-m", "venv", str(target)], target.parent)
    pip = [str(target / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "install", "--quiet", *PYTHON_PINS], target.parent)
    (target / MARKER).write_text("\n".join(PYTHON_PINS) + "\n")
    return target / "bin" / "python"


def install_all() -> dict[str, str]:
    """Install (or find cached) every peer; peer name -> version."""
    install_graphile()
    install_pyvenv()
    return {
        "graphile-worker": GRAPHILE_WORKER_VERSION,
        "pgqueuer": PGQUEUER_VERSION,
        "procrastinate": PROCRASTINATE_VERSION,
    }
