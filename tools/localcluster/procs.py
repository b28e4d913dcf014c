"""Process helpers: free loopback ports, start in a new session, stop by pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self


class Lifecycle:
    """`with X() as x:` for anything with start() and stop(): stop runs however the block
    ends, so a failing test never leaves servers behind."""

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    # The port could be taken between close and use; on a dev box that race is rare enough.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


_SETPRIV = shutil.which("setpriv")


def orphan_proof(argv: list[str]) -> list[str]:
    """Make argv die with the thread that starts it, even if that process is SIGKILLed.

    `setpriv --pdeathsig KILL` sets PR_SET_PDEATHSIG and then execs argv (same pid), so a
    test run killed by a timeout does not leave an apiserver or pod process behind.
    preexec_fn could do the same but is unsafe with threads. Note the signal follows the
    *thread* that started the child: start clusters from a thread that outlives them.
    """
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv] if _SETPRIV else argv


def start(
    argv: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    *,
    die_with_parent: bool = True,
) -> subprocess.Popen[bytes]:
    """Start argv in its own session (so its process group id is its pid), logging to a file."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            orphan_proof(argv) if die_with_parent else argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours so it reads as gone.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group led by pid (we start every child as a group leader)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the group led by pid, wait up to grace seconds, then SIGKILL it."""
    if not alive(pid):
        signal_group(pid, signal.SIGKILL)  # strays left by a leader that already exited
        return
    signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(pid):
            break
        time.sleep(0.05)
    signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
