"""Probe and lifecycle-hook handlers (httpGet, tcpSocket, exec), run against the pod's IP."""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from localcluster.env import expand
from localcluster.kube import Obj


@dataclass
class ProbeState:
    """Counters for one probe of one container; thresholds as the kubelet applies them."""

    spec: Obj
    next_run: float = 0.0
    successes: int = 0
    failures: int = 0
    # Result after thresholds: None until the first verdict.
    ok: bool | None = None

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds", 10))

    @property
    def timeout(self) -> float:
        return float(self.spec.get("timeoutSeconds", 1))

    def record(self, success: bool) -> bool | None:
        """Feed one result; returns the new verdict when it changes, else None."""
        before = self.ok
        if success:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= int(self.spec.get("successThreshold", 1)):
                self.ok = True
        else:
            self.failures, self.successes = self.failures + 1, 0
            if self.failures >= int(self.spec.get("failureThreshold", 3)):
                self.ok = False
        return self.ok if self.ok != before else None


def resolve_port(port: int | str, container: Obj) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"no container port named {port!r}")


def run_handler(
    handler: Obj,
    pod_ip: str,
    container: Obj,
    *,
    env: Mapping[str, str],
    cwd: str,
    timeout: float,
) -> tuple[bool, str]:
    """Run one probe/hook handler; returns (success, detail)."""
    try:
        if "httpGet" in handler:
            return _http_get(handler["httpGet"], pod_ip, container, timeout)
        if "tcpSocket" in handler:
            spec = handler["tcpSocket"]
            host = spec.get("host") or pod_ip
            port = resolve_port(spec["port"], container)
            with socket.create_connection((host, port), timeout=timeout):
                return True, ""
        if "exec" in handler:
            # Like the kubelet, expand $(VAR) references to the container's env in the command.
            command = [expand(str(a), env) for a in handler["exec"]["command"]]
            proc = subprocess.run(
                command,
                env=dict(env),
                cwd=cwd,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
            out = (proc.stdout + proc.stderr).decode(errors="replace")[-300:]
            return proc.returncode == 0, f"exit {proc.returncode}: {out}"
        if "sleep" in handler:
            return True, ""
    except (OSError, subprocess.TimeoutExpired, http.client.HTTPException, ValueError) as e:
        return False, str(e) or type(e).__name__
    return False, f"unsupported handler {sorted(handler)}"


def _http_get(spec: Obj, pod_ip: str, container: Obj, timeout: float) -> tuple[bool, str]:
    host = spec.get("host") or pod_ip
    port = resolve_port(spec["port"], container)
    conn: http.client.HTTPConnection
    if spec.get("scheme", "HTTP").upper() == "HTTPS":
        # The kubelet does not verify probe certificates either.
        ctx = ssl._create_unverified_context()  # noqa: S323
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        headers = {h["name"]: h["value"] for h in spec.get("httpHeaders") or []}
        headers.setdefault("User-Agent", "kube-probe/localcluster")
        conn.request("GET", spec.get("path") or "/", headers=headers)
        status = conn.getresponse().status
    finally:
        conn.close()
    # Same rule as the kubelet: any 2xx or 3xx is a success.
    return 200 <= status < 400, f"HTTP {status}"
