"""The image table: what "running image X" means when there is no container runtime.

An entry plays the role of an image's ENTRYPOINT/CMD/ENV: a container's `command` replaces
the entry's `command`, its `args` replace the entry's `args`, as in Docker and Kubernetes.

File format (YAML or JSON) for the CLI::

    images:
      example.com/echo:1.0:            # exact reference, or a name without tag/digest
        command: ["{python}", "{dir}/echo.py"]   # {python}: the agent's interpreter,
        args: ["--port", "8080"]                  # {dir}: the directory of this file
        env: {PYTHONPATH: "{dir}"}
        workingDir: "{dir}"
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Image:
    command: list[str]
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str | None = None


def image_name(ref: str) -> str:
    """Reference without digest or tag: `reg:5000/a/b:1.0@sha256:..` -> `reg:5000/a/b`."""
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        ref = ref[: len(ref) - len(last)] + last.split(":", 1)[0]
    return ref


class ImageTable:
    def __init__(self, images: Mapping[str, Image] | None = None) -> None:
        self.images: dict[str, Image] = dict(images or {})

    def add(self, ref: str, image: Image) -> None:
        self.images[ref] = image

    def resolve(self, ref: str) -> Image | None:
        """Exact reference first, then an entry keyed by the bare name (any tag matches)."""
        return self.images.get(ref) or self.images.get(image_name(ref))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: Path | None = None) -> ImageTable:
        subst = {"python": sys.executable, "dir": str(base_dir or Path.cwd())}

        def fmt(s: Any) -> str:
            return str(s).format(**subst)

        table = cls()
        for ref, raw in (data.get("images") or {}).items():
            wd = raw.get("workingDir")
            table.add(
                str(ref),
                Image(
                    command=[fmt(c) for c in raw.get("command") or []],
                    args=[fmt(a) for a in raw.get("args") or []],
                    env={str(k): fmt(v) for k, v in (raw.get("env") or {}).items()},
                    working_dir=fmt(wd) if wd else None,
                ),
            )
        return table

    @classmethod
    def load(cls, path: Path) -> ImageTable:
        text = path.read_text()
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml  # PyYAML: only needed for YAML tables

            data = yaml.safe_load(text) or {}
        return cls.from_dict(data, base_dir=path.resolve().parent)
