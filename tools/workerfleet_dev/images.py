"""The project's images, built from its own Dockerfiles for the real node (`make e2e-node`,
`make demo DEMO_ARGS=--real-node`) or for any Docker (`make images`).

Wheels of the project and its dependencies are built on the host into build/wheels (pip's
cache keeps that quick); the Dockerfiles install only from there, so an image build needs no
network. On the real node the base image is the Debian root made by debootstrap
(localcluster.realnode.images); the Dockerfiles' default stays the public Python image.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from localcluster.realnode import prereqs
from localcluster.realnode.images import PAUSE_IMAGE, ImageBuilder, cache_dir

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / "build" / "wheels"
WORKER_IMAGE = "fleet-worker:0.1.0"
OPERATOR_IMAGE = "workerfleet-operator:0.1.0"
TEST_APP = "workerfleet.test/app"
TEST_RELEASES = ("1", "2", "3", "crash")
DEMO_APP = "workerfleet/demo-app"
DEMO_RELEASES = ("1", "2", "3")
SETS = ("e2e", "demo")


def build_wheels() -> Path:
    """Wheels of this checkout and everything it installs (operator extra included)."""
    t0 = time.monotonic()
    shutil.rmtree(WHEELS, ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--wheel-dir", str(WHEELS), f"{ROOT}[operator]"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"pip wheel failed:\n{proc.stderr[-3000:]}")
    _log(f"wheels in {WHEELS} ({len(list(WHEELS.glob('*.whl')))}) in {time.monotonic() - t0:.1f}s")
    return WHEELS


def build_images(b: ImageBuilder, base: str, sets: Iterable[str] = SETS) -> list[str]:
    """The worker and operator images on `base`, then the app images of each set."""
    tags = [WORKER_IMAGE, OPERATOR_IMAGE]
    b.build(WORKER_IMAGE, dockerfile=ROOT / "worker_image" / "Dockerfile", context=ROOT,
            build_args={"BASE_IMAGE": base})  # fmt: skip
    b.build(OPERATOR_IMAGE, dockerfile=ROOT / "operator" / "Dockerfile", context=ROOT,
            build_args={"WORKER_IMAGE": WORKER_IMAGE})  # fmt: skip
    apps = {"e2e": (TEST_APP, TEST_RELEASES, "tests/apps/Dockerfile"),
            "demo": (DEMO_APP, DEMO_RELEASES, "demo/Dockerfile")}  # fmt: skip
    for name in sets:
        image, releases, dockerfile = apps[name]
        for release in releases:
            tag = f"{image}:{release}"
            b.build(tag, dockerfile=ROOT / dockerfile, context=ROOT,
                    build_args={"WORKER_IMAGE": WORKER_IMAGE, "RELEASE": release})  # fmt: skip
            tags.append(tag)
    return tags


def node_archive(sets: Iterable[str] = SETS) -> Path:
    """Build everything the real node runs and save it as one archive for containerd."""
    tools = prereqs.check()
    build_wheels()
    archive = cache_dir() / "node-images.tar"
    with ImageBuilder(tools) as b:
        base = b.ensure_base()
        tags = [b.ensure_pause(), *build_images(b, base, sets)]
        t0 = time.monotonic()
        tmp = archive.with_suffix(".tmp")
        b.save(tags, tmp)
        tmp.rename(archive)
        _log(f"saved {len(tags)} images to {archive} in {time.monotonic() - t0:.1f}s")
    assert PAUSE_IMAGE in tags
    return archive


def _log(msg: str) -> None:
    print(f"[workerfleet images] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="build the project's images for the real node")
    parser.add_argument("--set", action="append", choices=SETS, help="app images (default all)")
    parser.add_argument("--wheels-only", action="store_true", help="only build/wheels")
    args = parser.parse_args(argv)
    print(build_wheels() if args.wheels_only else node_archive(args.set or SETS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
