"""Command-line entry points; `up` records pids in a state dir so `down` can stop exactly them."""

from __future__ import annotations

import argparse

from localcluster import bins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("bins", help="find or build etcd/kube-apiserver/kube-controller-manager")
    args = parser.parse_args(argv)
    if args.cmd == "bins":
        found = bins.ensure()
        for path in (found.etcd, found.kube_apiserver, found.kube_controller_manager):
            print(path)
        return 0
    return 2
