"""The node agent: a kubelet stand-in that runs pods as local processes.

It registers Node objects (Ready, with capacity), renews their Leases, binds pending pods
(there is no kube-scheduler), and hands each pod bound to one of its nodes to a
`PodWorker`. Each pod gets its own loopback address, 127.0.0.N, as status.podIP.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

from localcluster.images import ImageTable
from localcluster.kube import ApiError, Client, Obj
from localcluster.pods import AgentContext, PodWorker, now_rfc3339, pod_log_dir
from localcluster.procs import Lifecycle

log = logging.getLogger("localcluster.node")

KUBELET_VERSION = "v1.34.4-localcluster"


class IpAllocator:
    """Hands out 127.B.0.2, .3, ... (127.0.0.1 is the apiserver's). Released addresses go to
    the back of the line so a new pod does not inherit a dying pod's port.

    B is the first /16 block of 127/8 no other agent on this machine holds (a flock on a
    file per block, released when the agent stops), so two test sessions at once never
    give two pods the same address. Alone, B is 0: pods get 127.0.0.N.
    """

    LOCK_DIR = Path(tempfile.gettempdir()) / "localcluster-ip-blocks"

    def __init__(self) -> None:
        self.LOCK_DIR.mkdir(exist_ok=True)
        # Loopback addresses are shared by all users, so the lock dir must be too.
        with contextlib.suppress(OSError):
            self.LOCK_DIR.chmod(0o1777)
        self._lockfile: IO[str] | None = None
        for block in range(255):
            f = (self.LOCK_DIR / f"{block}.lock").open("a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            self._lockfile, self.block = f, block
            break
        else:
            raise RuntimeError(f"all 255 loopback blocks are held (see {self.LOCK_DIR})")
        start = int(ipaddress.IPv4Address(f"127.{self.block}.0.2"))
        self._free = [str(ipaddress.IPv4Address(start + i)) for i in range(65000)]
        self._lock = threading.Lock()

    def allocate(self) -> str:
        with self._lock:
            return self._free.pop(0)

    def release(self, ip: str) -> None:
        with self._lock:
            self._free.append(ip)

    def close(self) -> None:
        if self._lockfile is not None:
            self._lockfile.close()  # closing drops the flock
            self._lockfile = None


class NodeAgent(Lifecycle):
    def __init__(
        self,
        client: Client,
        images: ImageTable,
        workdir: Path,
        *,
        server: str,
        ca_file: Path,
        nodes: tuple[str, ...] = ("localnode-0",),
        capacity: dict[str, str] | None = None,
        backoff_initial: float = 10.0,
        backoff_max: float = 300.0,
    ) -> None:
        self.client = client
        self.nodes = nodes
        self.capacity = capacity or {"cpu": "8", "memory": "16Gi", "pods": "110"}
        self.ips = IpAllocator()
        self.ctx = AgentContext(
            client=client,
            images=images,
            server=server,
            ca_file=ca_file,
            pods_dir=workdir / "pods",
            logs_dir=workdir / "logs",
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            release_ip=self.ips.release,
        )
        self.workers: dict[str, PodWorker] = {}  # by pod uid
        # Late watch events for a pod we already removed must not start it again.
        self._finished: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next_node = 0

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        for name in self.nodes:
            self._register(name)
        for target, tname in ((self._heartbeat_loop, "heartbeat"), (self._watch_loop, "pods")):
            t = threading.Thread(target=target, name=f"node-agent-{tname}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, grace: float = 5.0) -> None:
        """Stop watching and kill every pod process (the pod objects stay)."""
        self._stop.set()
        with self._lock:
            workers = list(self.workers.values())
        for w in workers:
            w.shutdown(grace)
        for w in workers:
            w.join(grace + 10)
        # The pod watch may sit in a read for up to its 30 s timeout; it is a daemon thread
        # that exits on its next wake-up, so do not wait for it.
        for t in self._threads:
            t.join(0.5)
        self.ips.close()

    # -- helpers for tests ----------------------------------------------------------------
    def log_path(self, namespace: str, pod: str, container: str | None = None) -> Path:
        """The newest log file of a container (the first container if none is named)."""
        obj = self.client.get(f"/api/v1/namespaces/{namespace}/pods/{pod}")
        name = container or obj["spec"]["containers"][0]["name"]
        d = pod_log_dir(self.ctx.logs_dir, namespace, pod, obj["metadata"]["uid"]) / name
        files = sorted(d.glob("*.log"), key=lambda p: int(p.stem))
        if not files:
            raise FileNotFoundError(f"no logs yet for {namespace}/{pod}/{name} in {d}")
        return files[-1]

    def logs(self, namespace: str, pod: str, container: str | None = None) -> str:
        return self.log_path(namespace, pod, container).read_text(errors="replace")

    def pids(self) -> list[int]:
        """Pids of the running container processes (each leads its own process group)."""
        with self._lock:
            workers = list(self.workers.values())
        return [
            c.proc.pid
            for w in workers
            for c in w.init_containers + w.containers
            if c.proc is not None
        ]

    # -- nodes ----------------------------------------------------------------------------
    def _register(self, name: str) -> None:
        node: Obj = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "node.workerfleet.dev/localcluster": "true",
                },
            },
        }
        with contextlib.suppress(ApiError):
            self.client.create("/api/v1/nodes", node)
        self._node_status(name)
        self._renew_lease(name)

    def _node_status(self, name: str) -> None:
        now = now_rfc3339()
        conditions = [
            {
                "type": t,
                "status": "True" if t == "Ready" else "False",
                "reason": reason,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
            for t, reason in (
                ("Ready", "KubeletReady"),
                ("MemoryPressure", "KubeletHasSufficientMemory"),
                ("DiskPressure", "KubeletHasNoDiskPressure"),
                ("PIDPressure", "KubeletHasSufficientPID"),
            )
        ]
        status = {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "localcluster://processes",
                "osImage": "localcluster",
                "kernelVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }
        self.client.merge_patch(f"/api/v1/nodes/{name}/status", {"status": status})

    def _renew_lease(self, name: str) -> None:
        path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        spec = {
            "holderIdentity": name,
            "leaseDurationSeconds": 40,
            "renewTime": datetime_micro(),
        }
        try:
            self.client.merge_patch(f"{path}/{name}", {"spec": spec})
        except ApiError as e:
            if e.status != 404:
                raise
            lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease"}
            self.client.create(path, {**lease, "metadata": {"name": name}, "spec": spec})

    def _heartbeat_loop(self) -> None:
        beats = 0
        while not self._stop.wait(10):
            beats += 1
            for name in self.nodes:
                try:
                    self._renew_lease(name)
                    if beats % 6 == 0:  # the kubelet also refreshes status about every minute
                        self._node_status(name)
                except Exception as e:  # keep beating through blips
                    log.warning("heartbeat for node %s failed: %s", name, e)

    # -- pods -----------------------------------------------------------------------------
    def _watch_loop(self) -> None:
        rv = ""
        while not self._stop.is_set():
            try:
                if not rv:
                    listing = self.client.get("/api/v1/pods")
                    for pod in listing["items"]:
                        self._handle("ADDED", pod)
                    rv = listing["metadata"]["resourceVersion"]
                for event in self.client.watch("/api/v1/pods", rv, timeout_s=30):
                    if self._stop.is_set():
                        return
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        rv = ""  # usually 410 Gone: relist
                        break
                    rv = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self._handle(event["type"], obj)
            except Exception as e:  # a watch must survive apiserver hiccups
                if self._stop.is_set():
                    return
                log.warning("pod watch failed, relisting: %s", e)
                rv = ""
                time.sleep(0.5)

    def _handle(self, kind: str, pod: Obj) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        with self._lock:
            worker = self.workers.get(uid)
        if kind == "DELETED":
            if worker is not None:
                worker.deleted(pod)
            return
        node = spec.get("nodeName")
        if not node:
            if not meta.get("deletionTimestamp"):
                self._bind(pod)
            return
        if node not in self.nodes:
            return
        if worker is None:
            with self._lock:
                if self._stop.is_set() or uid in self._finished:
                    return
                worker = PodWorker(self.ctx, pod, self.ips.allocate())
                self.workers[uid] = worker
            worker.start()
            threading.Thread(target=self._reap, args=(uid, worker), daemon=True).start()
        worker.update(pod)

    def _reap(self, uid: str, worker: PodWorker) -> None:
        worker.finished.wait()
        with self._lock:
            self.workers.pop(uid, None)
            self._finished.add(uid)

    def _bind(self, pod: Obj) -> None:
        """Round-robin over our nodes that match the pod's nodeSelector."""
        meta = pod["metadata"]
        selector = pod["spec"].get("nodeSelector") or {}
        candidates = [
            n
            for n in self.nodes
            if all(
                {"kubernetes.io/hostname": n, "kubernetes.io/os": "linux"}.get(k) == v
                for k, v in selector.items()
            )
        ]
        if not candidates:
            return
        node = candidates[self._next_node % len(candidates)]
        self._next_node += 1
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        try:
            self.client.create(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding", binding
            )
        except ApiError as e:
            # 409: already bound (we saw a stale copy); 404: deleted meanwhile.
            if e.status not in (404, 409):
                log.warning("binding %s/%s failed: %s", meta["namespace"], meta["name"], e)


def datetime_micro() -> str:
    """MicroTime, as Lease.spec.renewTime requires."""
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
