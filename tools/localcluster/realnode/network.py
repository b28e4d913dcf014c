"""Pod networking on a bridge of this machine, and the one route into the control plane.

Pods get addresses on the layout's bridge from the CNI bridge and host-local plugins; the
bridge's own address (`Layout.gateway`) is this machine as pods see it: PostgreSQL listens
there too, and the kubelet serves and probes from it. No masquerading and no forwarding:
every packet stays on this machine.

kube-proxy is not run, so Service IPs are not routed, with one exception: the `kubernetes`
Service, which in-cluster clients (the operator's pod) reach through KUBERNETES_SERVICE_HOST.
One DNAT rule in a chain of our own sends it to the apiserver on loopback (`route_localnet`
on the bridge allows that). `teardown` removes the chain, the jump and the bridge; it is
safe to call when none of them exist.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from localcluster import pki
from localcluster.realnode.layout import DEFAULT, Layout

# The default node's addresses, for callers that only ever run one.
SUBNET = DEFAULT.subnet
GATEWAY = DEFAULT.gateway


def _jump(lay: Layout) -> list[str]:
    return ["PREROUTING", "-i", lay.bridge, "-m", "comment", "--comment",
            f"workerfleet real node {lay.index}", "-j", lay.chain]  # fmt: skip


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc


def cni_conflist(lay: Layout, ipam_dir: Path) -> dict[str, object]:
    return {
        "cniVersion": "1.0.0",
        "name": f"workerfleet-node-{lay.index}",
        "plugins": [
            {
                "type": "bridge",
                "bridge": lay.bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": lay.subnet, "gateway": lay.gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            }
        ],
    }


def setup(lay: Layout, cni_conf: Path, ipam_dir: Path, apiserver_port: int) -> None:
    teardown(lay)
    _run("ip", "link", "add", lay.bridge, "address", lay.bridge_mac, "type", "bridge")
    _run("ip", "addr", "add", f"{lay.gateway}/{lay.subnet.split('/')[1]}", "dev", lay.bridge)
    _run("ip", "link", "set", lay.bridge, "up")
    Path(f"/proc/sys/net/ipv4/conf/{lay.bridge}/route_localnet").write_text("1\n")
    _run("iptables", "-t", "nat", "-N", lay.chain)
    _run("iptables", "-t", "nat", "-A", lay.chain, "-d", pki.SERVICE_IP, "-p", "tcp", "--dport",
         "443", "-j", "DNAT", "--to-destination", f"127.0.0.1:{apiserver_port}")  # fmt: skip
    _run("iptables", "-t", "nat", "-A", *_jump(lay))
    cni_conf.mkdir(parents=True, exist_ok=True)
    ipam_dir.mkdir(parents=True, exist_ok=True)
    conflist = json.dumps(cni_conflist(lay, ipam_dir), indent=2)
    (cni_conf / "10-workerfleet.conflist").write_text(conflist)


def teardown(lay: Layout) -> None:
    while _run("iptables", "-t", "nat", "-D", *_jump(lay), check=False).returncode == 0:
        pass
    if _run("iptables", "-t", "nat", "-F", lay.chain, check=False).returncode == 0:
        _run("iptables", "-t", "nat", "-X", lay.chain)
    if Path(f"/sys/class/net/{lay.bridge}").exists():
        _run("ip", "link", "del", lay.bridge)


def leftovers(lay: Layout) -> list[str]:
    """What of ours is still on this machine (empty after teardown)."""
    found = []
    if Path(f"/sys/class/net/{lay.bridge}").exists():
        found.append(f"bridge {lay.bridge}")
    if _run("iptables", "-t", "nat", "-S", lay.chain, check=False).returncode == 0:
        found.append(f"iptables chain nat/{lay.chain}")
    return found
