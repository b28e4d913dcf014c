"""The Go tools the tests run as the real tool a user would (kstatus, helm, promtool),
built from the Go module proxy into the per-user cache, keyed by the pinned module version,
once.

    python -m workerfleet_dev.gotools [kstatus-check] [helm] [promtool]  # prints their paths

A tool is either a `main.go` in this repository (tools/<name with underscores>/) over one
pinned module, or a command of one pinned module built as it is (helm's cmd/helm). The
go.mod is generated in the cache (never the repo), `go mod tidy` resolves the rest through
the proxy, and the binary is renamed into place, so a half-built one is never found. The
cache key is the module version and a hash of the Go source. A file lock keeps two
processes from building the same tool at once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from localcluster.bins import _go, _lock, _run

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class GoTool:
    name: str
    module: str  # the one module it pins
    version: str
    # A command of that module built as it is (helm), instead of our own main.go.
    package: str | None = None
    ldflags: str = ""

    @property
    def source(self) -> Path | None:
        if self.package is not None:
            return None
        return ROOT / "tools" / self.name.replace("-", "_") / "main.go"

    def main_text(self) -> str:
        if self.source is not None:
            return self.source.read_text()
        # Keeps the command's module in go.mod through `go mod tidy` without compiling it.
        return f'//go:build tools\n\npackage tools\n\nimport _ "{self.package}"\n'


KSTATUS_CHECK = GoTool("kstatus-check", "sigs.k8s.io/cli-utils", "v0.37.2")
HELM = GoTool(
    "helm", "helm.sh/helm/v3", "v3.22.0", package="helm.sh/helm/v3/cmd/helm",
    ldflags="-X helm.sh/helm/v3/internal/version.version=v3.22.0",  # what `helm version` says
)  # fmt: skip
PROMTOOL = GoTool(
    "promtool", "github.com/prometheus/prometheus", "v0.316.0",
    package="github.com/prometheus/prometheus/cmd/promtool",
)  # fmt: skip
TOOLS = {t.name: t for t in (KSTATUS_CHECK, HELM, PROMTOOL)}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "workerfleet" / "gotools"


def ensure(tool: GoTool) -> Path:
    """The tool's binary, built first if the cache lacks it (a minute or two, once)."""
    # Keyed by the pinned version and the source, so an edit of main.go rebuilds.
    digest = hashlib.sha256(tool.main_text().encode()).hexdigest()[:12]
    dest = cache_dir() / f"{tool.name}-{tool.version}-{digest}" / tool.name
    if os.access(dest, os.X_OK):
        return dest
    with _lock(cache_dir() / f".{tool.name}.lock"):
        if os.access(dest, os.X_OK):
            return dest
        go = _go()
        work = cache_dir() / "build" / f"{tool.name}-{tool.version}"
        work.mkdir(parents=True, exist_ok=True)
        (work / "go.mod").write_text(
            f"module workerfleet.dev/{tool.name}\n\ngo 1.24\n\n"
            f"require {tool.module} {tool.version}\n"
        )
        (work / ("main.go" if tool.package is None else "tools.go")).write_text(tool.main_text())
        print(f"gotools: building {tool.name} ({tool.module} {tool.version})", file=sys.stderr)
        _run([go, "mod", "tidy"], work, mod_mode=False)
        tmp = Path(tempfile.mkdtemp(prefix=f".{tool.name}-", dir=cache_dir()))
        try:
            target = tool.package or "."
            flags = ["-ldflags", tool.ldflags] if tool.ldflags else []
            _run([go, "build", "-trimpath", *flags, "-o", str(tmp / tool.name), target], work)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / tool.name, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    for name in args or list(TOOLS):
        if name not in TOOLS:
            print(f"unknown tool {name!r}; known: {', '.join(TOOLS)}", file=sys.stderr)
            return 2
        print(ensure(TOOLS[name]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
