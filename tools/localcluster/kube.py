"""A tiny typed Kubernetes REST client on urllib3 (JSON dicts in, JSON dicts out).

The node agent needs a handful of verbs on a few resources plus watches; plain dicts keep
it independent of the generated `kubernetes` models and easy to type-check.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import urllib3

Obj = dict[str, Any]


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class Credentials:
    server: str
    ca: Path
    cert: Path
    key: Path


class Client:
    def __init__(self, creds: Credentials) -> None:
        self.server = creds.server.rstrip("/")
        ctx = ssl.create_default_context(cafile=str(creds.ca))
        ctx.load_cert_chain(str(creds.cert), str(creds.key))
        self._pool = urllib3.PoolManager(ssl_context=ctx, maxsize=8, retries=False)

    def request(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        *,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Obj:
        url = self.server + path + (("?" + urlencode(params)) if params else "")
        data = json.dumps(body).encode() if body is not None else None
        for _ in range(20):
            resp = self._pool.request(
                method,
                url,
                body=data,
                headers={"Content-Type": content_type, "Accept": "application/json"},
                timeout=timeout,
            )
            # 429 is the apiserver asking to come back shortly (e.g. a new CRD's storage is
            # initializing, or priority-and-fairness pushback), as client-go retries it.
            if resp.status != 429:
                break
            time.sleep(min(float(resp.headers.get("Retry-After") or 1), 1.0))
        text = resp.data.decode()
        if resp.status >= 400:
            raise ApiError(resp.status, text)
        result: Obj = json.loads(text) if text else {}
        return result

    def get(self, path: str) -> Obj:
        return self.request("GET", path)

    def get_text(self, path: str) -> str:
        """A non-JSON endpoint (`/metrics`, a pod's `/log`) as text."""
        resp = self._pool.request("GET", self.server + path, timeout=30.0)
        if resp.status >= 400:
            raise ApiError(resp.status, resp.data.decode())
        return str(resp.data.decode())

    def create(self, path: str, body: Obj) -> Obj:
        return self.request("POST", path, body)

    def merge_patch(self, path: str, body: Obj) -> Obj:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def delete(self, path: str, body: Obj | None = None) -> Obj:
        return self.request("DELETE", path, body)

    def watch(self, path: str, resource_version: str, timeout_s: int = 60) -> Iterator[Obj]:
        """Yield watch events until the server ends the stream (timeout_s) or it breaks."""
        params = {
            "watch": "1",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(timeout_s),
            "allowWatchBookmarks": "true",
        }
        url = f"{self.server}{path}?{urlencode(params)}"
        resp = self._pool.request(
            "GET",
            url,
            preload_content=False,
            timeout=urllib3.Timeout(connect=10, read=timeout_s + 10),
        )
        try:
            if resp.status >= 400:
                raise ApiError(resp.status, resp.read().decode())
            buf = b""
            for chunk in resp.stream(8192):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        event: Obj = json.loads(line)
                        yield event
        finally:
            resp.release_conn()
