"""The real node's generated configuration: pure functions, checked without a node."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from localcluster.realnode.cluster import _normalize
from localcluster.realnode.containerd import config_toml
from localcluster.realnode.layout import Layout
from localcluster.realnode.network import cni_conflist


@pytest.mark.parametrize(
    ("ref", "stored"),
    [
        ("workerfleet-operator:0.1.0", "docker.io/library/workerfleet-operator:0.1.0"),
        ("fleet-worker", "docker.io/library/fleet-worker:latest"),
        ("library/x:1", "docker.io/library/x:1"),
        ("workerfleet.test/app:crash", "workerfleet.test/app:crash"),
        ("localhost:5000/a/b:2", "localhost:5000/a/b:2"),
        ("localhost/a", "localhost/a:latest"),
    ],
)
def test_image_references_resolve_as_the_kubelet_resolves_them(ref: str, stored: str) -> None:
    assert _normalize(ref) == stored


def test_containerd_config_is_valid_toml_with_the_settings_this_machine_needs() -> None:
    text = config_toml(
        Path("/r/containerd"), Path("/r/run/containerd"), Path("/r/run/containerd.sock"),
        cni_bin=Path("/usr/lib/cni"), cni_conf=Path("/r/cni/net.d"), sandbox_image="p:1",
    )  # fmt: skip
    cri = tomllib.loads(text)["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True  # no CAP_SYS_RESOURCE here
    assert cri["netns_mounts_under_state_dir"] is True  # cleanup is one unmount walk
    assert cri["sandbox_image"] == "p:1"
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False


def test_instances_never_share_a_bridge_subnet_chain_or_directory() -> None:
    a, b = Layout(0), Layout(1)
    for attr in (
        "root",
        "bridge",
        "bridge_mac",
        "subnet",
        "gateway",
        "chain",
        "cgroup_root",
        "lock",
    ):
        assert getattr(a, attr) != getattr(b, attr), attr
    assert len(Layout(199).bridge) <= 15  # Linux interface names
    with pytest.raises(ValueError):
        Layout(200)
    plugin = cni_conflist(b, Path("/ipam"))["plugins"][0]  # type: ignore[index]
    assert plugin["bridge"] == b.bridge and plugin["ipMasq"] is False
