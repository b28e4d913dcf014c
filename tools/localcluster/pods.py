"""One pod, run as local processes: the kubelet's sync loop in miniature.

A `PodWorker` thread owns its pod: it starts containers (init containers first), runs
probes, restarts with back-off, reports status, and on deletion sends SIGTERM, waits the
grace period, SIGKILLs, then removes the pod object.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from localcluster import env as envmod
from localcluster import probes, procs
from localcluster.images import ImageTable
from localcluster.kube import ApiError, Client, Obj

log = logging.getLogger("localcluster.pods")

TICK = 0.1


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class AgentContext:
    """What every pod worker shares with the node agent."""

    client: Client
    images: ImageTable
    server: str
    ca_file: Path
    pods_dir: Path
    logs_dir: Path
    backoff_initial: float = 10.0
    backoff_max: float = 300.0
    release_ip: Any = None  # Callable[[str], None]; Any keeps the dataclass simple


def pod_log_dir(logs_dir: Path, namespace: str, name: str, uid: str) -> Path:
    # Same layout as the kubelet's /var/log/pods/<ns>_<name>_<uid>/<container>/<n>.log
    return logs_dir / f"{namespace}_{name}_{uid}"


@dataclass
class Container:
    spec: Obj
    init: bool = False
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    restart_count: int = 0
    crash_streak: int = 0
    started_at: str = ""
    started_mono: float = 0.0
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    ready: bool = False
    started: bool = False  # startup probe passed (or none)
    done: bool = False  # terminated and will not restart
    next_start: float = 0.0
    kill_deadline: float | None = None
    kill_reason: str = ""
    probes: dict[str, probes.ProbeState] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.spec["name"])


class PodWorker(threading.Thread):
    def __init__(self, ctx: AgentContext, pod: Obj, pod_ip: str) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.ctx = ctx
        self.pod = pod
        self.ip = pod_ip
        self.ns, self.pod_name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.dir = ctx.pods_dir / f"{self.ns}_{self.pod_name}_{self.uid}"
        self.log_dir = pod_log_dir(ctx.logs_dir, self.ns, self.pod_name, self.uid)
        spec = pod["spec"]
        self.policy = spec.get("restartPolicy", "Always")
        self.init_containers = [Container(c, init=True) for c in spec.get("initContainers") or []]
        self.containers = [Container(c) for c in spec.get("containers") or []]
        self.base_env: dict[str, str] = {}
        self.start_time = ""
        self.phase = "Pending"
        self.conditions: dict[str, Obj] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._terminate_grace: float | None = None
        self._deleted = False
        self._stopping_agent = False
        self._last_status: Obj | None = None
        self.finished = threading.Event()

    # -- signals from the node agent ------------------------------------------------------
    def update(self, pod: Obj) -> None:
        with self._lock:
            self.pod = pod
            ts = pod["metadata"].get("deletionTimestamp")
            if ts and self._terminate_grace is None:
                grace = pod["metadata"].get("deletionGracePeriodSeconds")
                if grace is None:
                    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
                self._terminate_grace = float(grace)
        self._wake.set()

    def deleted(self, pod: Obj) -> None:
        """The object is gone (force delete): stop the processes, skip the final delete."""
        with self._lock:
            self._deleted = True
            if self._terminate_grace is None:
                self._terminate_grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
        self._wake.set()

    def shutdown(self, grace: float) -> None:
        """The agent is stopping: kill everything quickly, leave the pod object alone."""
        with self._lock:
            self._stopping_agent = True
            self._terminate_grace = min(grace, self._terminate_grace or grace)
        self._wake.set()

    # -- main loop ------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod worker %s/%s crashed", self.ns, self.pod_name)
            self._kill_all(2.0)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            if self.ctx.release_ip is not None:
                self.ctx.release_ip(self.ip)
            self.finished.set()

    def _run(self) -> None:
        phase = self.pod.get("status", {}).get("phase")
        terminal = phase in ("Succeeded", "Failed")
        if terminal:
            # Finished before this agent started: nothing to run, only deletion to handle.
            self.phase = str(phase)
        else:
            self.start_time = now_rfc3339()
            while not self._try_prepare():
                self._wake.wait(1.0)
                self._wake.clear()
                with self._lock:
                    if self._terminate_grace is not None:
                        break
        while True:
            with self._lock:
                grace = self._terminate_grace
            if grace is not None:
                self._terminate(grace)
                return
            if not terminal:
                self._sync()
                terminal = self.phase in ("Succeeded", "Failed")
                self._push_status()
            self._wake.wait(TICK if not terminal else 1.0)
            self._wake.clear()

    def _try_prepare(self) -> bool:
        """Sandbox setup; on an API error (say the ServiceAccount is gone) report and retry."""
        try:
            self._prepare()
        except (ApiError, OSError) as e:
            for c in self.init_containers + self.containers:
                c.state = {"waiting": {"reason": "ContainerCreating", "message": str(e)[:300]}}
            self._push_status()
            return False
        return True

    def _prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        port = self.ctx.server.rsplit(":", 1)[1]
        self.base_env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(self.dir),
            "HOSTNAME": self.pod_name,
            "LANG": "C.UTF-8",
            # Unbuffered so log files show output as it happens, like container logs.
            "PYTHONUNBUFFERED": "1",
            # The kubelet always injects these; here they point at the real apiserver.
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
            "KUBERNETES_PORT": f"tcp://127.0.0.1:{port}",
        }
        if self.pod["spec"].get("automountServiceAccountToken", True):
            self._service_account_files()
        self._set_condition("PodReadyToStartContainers", True)

    def _service_account_files(self) -> None:
        """Bound token + CA + namespace in a per-pod dir, and a kubeconfig that uses them.

        /var/run/secrets cannot differ per process without mount namespaces, so the process
        gets KUBECONFIG (which kopf and the kubernetes client read) and
        LOCALCLUSTER_SERVICEACCOUNT_DIR (the in-cluster files, for code that wants them).
        """
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": 86400,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.pod_name,
                    "uid": self.uid,
                },
            },
        }
        path = f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token"
        token = str(self.ctx.client.create(path, body)["status"]["token"])
        sa_dir = self.dir / "serviceaccount"
        sa_dir.mkdir(exist_ok=True)
        (sa_dir / "token").write_text(token)
        (sa_dir / "namespace").write_text(self.ns)
        shutil.copy(self.ctx.ca_file, sa_dir / "ca.crt")
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "in-cluster",
                    "cluster": {
                        "server": self.ctx.server,
                        "certificate-authority": str(sa_dir / "ca.crt"),
                    },
                }
            ],
            "users": [{"name": sa, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "in-cluster",
                    "context": {"cluster": "in-cluster", "user": sa, "namespace": self.ns},
                }
            ],
            "current-context": "in-cluster",
        }
        (sa_dir / "kubeconfig").write_text(json.dumps(kubeconfig, indent=2))
        self.base_env["KUBECONFIG"] = str(sa_dir / "kubeconfig")
        self.base_env["LOCALCLUSTER_SERVICEACCOUNT_DIR"] = str(sa_dir)

    def _sync(self) -> None:
        pending_init = [c for c in self.init_containers if not c.done]
        if pending_init:
            c = pending_init[0]
            self._tick(c)
            if c.done and c.state.get("terminated", {}).get("exitCode") != 0:
                self.phase = "Failed"
            else:
                self.phase = "Pending"
            return
        self._set_condition("Initialized", True)
        for c in self.containers:
            self._tick(c)
        self.phase = self._main_phase()
        all_ready = all(c.ready for c in self.containers)
        reason = "PodCompleted" if self.phase in ("Succeeded", "Failed") else ""
        self._set_condition("ContainersReady", all_ready, reason)
        self._set_condition("Ready", all_ready, reason)

    def _main_phase(self) -> str:
        if any(c.proc is not None or (c.last_state and not c.done) for c in self.containers):
            return "Running"
        if all(c.done for c in self.containers):
            failed = any(c.state["terminated"]["exitCode"] != 0 for c in self.containers)
            return "Failed" if failed else "Succeeded"
        return "Pending"

    # -- one container --------------------------------------------------------------------
    def _tick(self, c: Container) -> None:
        if c.done:
            return
        if c.proc is None:
            if time.monotonic() >= c.next_start:
                self._start(c)
            return
        rc = c.proc.poll()
        if rc is None:
            if c.kill_deadline is not None and time.monotonic() >= c.kill_deadline:
                procs.signal_group(c.proc.pid, signal.SIGKILL)
            elif c.kill_deadline is None:
                self._probe(c)
            return
        self._exited(c, rc)

    def _start(self, c: Container) -> None:
        image_ref = str(c.spec.get("image", ""))
        image = self.ctx.images.resolve(image_ref)
        if image is None:
            known = ", ".join(sorted(self.ctx.images.images)) or "none"
            c.state = {
                "waiting": {
                    "reason": "ErrImagePull",
                    "message": f'image "{image_ref}" is not in the localcluster image table '
                    f"(known: {known})",
                }
            }
            c.next_start = time.monotonic() + 5.0  # the table may be edited; look again
            return
        try:
            base = {**self.base_env, **image.env}
            c.env = envmod.container_env(self.ctx.client, self.pod_view(), c.spec, base)
        except (envmod.ConfigError, ApiError) as e:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            c.next_start = time.monotonic() + 2.0
            return
        command = c.spec.get("command") or image.command
        # As in Docker: an explicit command drops the image's default args.
        args = (
            c.spec.get("args") if "args" in c.spec else ([] if "command" in c.spec else image.args)
        )
        argv = [envmod.expand(str(a), c.env) for a in [*command, *(args or [])]]
        if not argv:
            c.state = {"waiting": {"reason": "CreateContainerError", "message": "no command"}}
            c.next_start = time.monotonic() + 5.0
            return
        logfile = self.log_dir / c.name / f"{c.restart_count}.log"
        cwd = c.spec.get("workingDir") or image.working_dir or str(self.dir)
        try:
            logfile.parent.mkdir(parents=True, exist_ok=True)
            with logfile.open("ab") as out:
                c.proc = subprocess.Popen(
                    procs.orphan_proof(argv),
                    cwd=cwd,
                    env=c.env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group: signals reach its children
                )
        except OSError as e:
            c.state = {"waiting": {"reason": "RunContainerError", "message": str(e)}}
            self._schedule_restart(c, failed=True)
            return
        c.started_at, c.started_mono = now_rfc3339(), time.monotonic()
        c.state = {"running": {"startedAt": c.started_at}}
        c.kill_deadline, c.kill_reason = None, ""
        c.probes = {
            kind: probes.ProbeState(
                c.spec[key], next_run=time.monotonic() + c.spec[key].get("initialDelaySeconds", 0)
            )
            for kind, key in (
                ("startup", "startupProbe"),
                ("liveness", "livenessProbe"),
                ("readiness", "readinessProbe"),
            )
            if not c.init and key in c.spec
        }
        c.started = "startup" not in c.probes
        c.ready = "readiness" not in c.probes and c.started and not c.init

    def _probe(self, c: Container) -> None:
        assert c.proc is not None
        now = time.monotonic()
        for kind, st in c.probes.items():
            if now < st.next_run or (kind != "startup" and not c.started):
                continue
            if kind == "startup" and c.started:
                continue
            st.next_run = now + st.period
            ok, detail = probes.run_handler(
                st.spec, self.ip, c.spec, env=c.env, cwd=str(self.dir), timeout=st.timeout
            )
            verdict = st.record(ok)
            if kind == "readiness" and verdict is not None:
                c.ready = verdict
            elif kind == "startup" and verdict is True:
                c.started = True
                c.ready = "readiness" not in c.probes
            elif kind in ("liveness", "startup") and verdict is False:
                log.info("%s/%s %s probe failed: %s", self.pod_name, c.name, kind, detail)
                grace = float(
                    st.spec.get("terminationGracePeriodSeconds")
                    or self.pod["spec"].get("terminationGracePeriodSeconds", 30)
                )
                procs.signal_group(c.proc.pid, signal.SIGTERM)
                c.kill_deadline = now + grace
                c.kill_reason = f"{kind} probe failed: {detail}"
                c.ready = False
                return

    def _exited(self, c: Container, rc: int) -> None:
        assert c.proc is not None
        # Reap strays in the group (a shell's children) so the next start is clean.
        procs.signal_group(c.proc.pid, signal.SIGKILL)
        # Popen reports death by signal as -N; containers report 128+N.
        exit_code = 128 - rc if rc < 0 else rc
        terminated = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": c.started_at,
            "finishedAt": now_rfc3339(),
            "containerID": f"localcluster://{c.proc.pid}",
        }
        if c.kill_reason:
            terminated["message"] = c.kill_reason
        elif exit_code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            # As the kubelet does: the tail of the log stands in for the message file.
            tail = self._log_tail(c)
            if tail:
                terminated["message"] = tail
        c.proc, c.ready = None, False
        ran_for = time.monotonic() - c.started_mono
        restart = (
            self.policy == "Always"
            or (self.policy == "OnFailure" and exit_code != 0)
            or (c.init and self.policy != "Never" and exit_code != 0)
        )
        if c.init and exit_code == 0:
            restart = False
        if not restart:
            c.state, c.done = {"terminated": terminated}, True
            return
        c.last_state = {"terminated": terminated}
        # The kubelet forgets old crashes once a container has run stably for a while.
        if ran_for > 2 * self.ctx.backoff_max:
            c.crash_streak = 0
        self._schedule_restart(c, failed=exit_code != 0)

    def _log_tail(self, c: Container, max_bytes: int = 2048, max_lines: int = 80) -> str:
        logfile = self.log_dir / c.name / f"{c.restart_count}.log"
        try:
            with logfile.open("rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - max_bytes))
                data = f.read()
        except OSError:
            return ""
        lines = data.decode("utf-8", "replace").splitlines()[-max_lines:]
        return "\n".join(lines).strip()

    def _schedule_restart(self, c: Container, failed: bool) -> None:
        c.restart_count += 1
        c.crash_streak += 1
        # First restart is immediate; later ones back off exponentially up to the cap.
        delay = 0.0
        if c.crash_streak > 1:
            delay = min(self.ctx.backoff_initial * 2 ** (c.crash_streak - 2), self.ctx.backoff_max)
        c.next_start = time.monotonic() + delay
        if delay > 0:
            c.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {delay:g}s restarting failed container={c.name} "
                    f"pod={self.pod_name}_{self.ns}({self.uid})",
                }
            }

    # -- termination ----------------------------------------------------------------------
    def _terminate(self, grace: float) -> None:
        running = [c for c in self.init_containers + self.containers if c.proc is not None]
        for c in running:
            self._pre_stop(c, grace)
        self._kill_all(grace)
        for c in running:
            if c.proc is not None:
                self._exited_final(c)
        with self._lock:
            skip_delete = self._deleted or self._stopping_agent
        if skip_delete:
            return
        if self.start_time:  # we ran it: report how it ended before removing it
            if self.phase not in ("Succeeded", "Failed"):
                self.phase = self._final_phase()
            self._set_condition("Ready", False, "PodCompleted")
            self._set_condition("ContainersReady", False, "PodCompleted")
            self._push_status()
        with contextlib.suppress(ApiError):
            self.ctx.client.delete(
                f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}",
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": self.uid},
                },
            )

    def _final_phase(self) -> str:
        codes = [c.state.get("terminated", {}).get("exitCode", 1) for c in self.containers]
        # A pod stopped on deletion is Failed unless every container exited 0 (kubelet rule
        # for restartPolicy Never/OnFailure; for Always the pod would be deleted anyway).
        return "Succeeded" if codes and all(code == 0 for code in codes) else "Failed"

    def _pre_stop(self, c: Container, grace: float) -> None:
        hook = (c.spec.get("lifecycle") or {}).get("preStop")
        if hook:
            probes.run_handler(hook, self.ip, c.spec, env=c.env, cwd=str(self.dir), timeout=grace)

    def _kill_all(self, grace: float) -> None:
        running = [c for c in self.init_containers + self.containers if c.proc is not None]
        for c in running:
            assert c.proc is not None
            procs.signal_group(c.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(
            c.proc is not None and c.proc.poll() is None for c in running
        ):
            time.sleep(0.05)
        for c in running:
            assert c.proc is not None
            procs.signal_group(c.proc.pid, signal.SIGKILL)
            c.proc.wait()

    def _exited_final(self, c: Container) -> None:
        assert c.proc is not None
        rc = c.proc.wait()
        exit_code = 128 - rc if rc < 0 else rc
        c.state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "startedAt": c.started_at,
                "finishedAt": now_rfc3339(),
                "containerID": f"localcluster://{c.proc.pid}",
            }
        }
        c.proc, c.ready, c.done = None, False, True

    # -- status ---------------------------------------------------------------------------
    def pod_view(self) -> Obj:
        """The pod as the downward API should see it (status.podIP set even before a push)."""
        with self._lock:
            pod = dict(self.pod)
        status = dict(pod.get("status") or {})
        status.update(podIP=self.ip, hostIP="127.0.0.1")
        pod["status"] = status
        return pod

    def _set_condition(self, ctype: str, value: bool, reason: str = "") -> None:
        status = "True" if value else "False"
        old = self.conditions.get(ctype)
        if old is not None and old["status"] == status and old.get("reason", "") == reason:
            return
        cond: Obj = {"type": ctype, "status": status, "lastTransitionTime": now_rfc3339()}
        if reason:
            cond["reason"] = reason
        self.conditions[ctype] = cond

    def _container_status(self, c: Container) -> Obj:
        image = str(c.spec.get("image", ""))
        st: Obj = {
            "name": c.name,
            "image": image,
            "imageID": f"localcluster://{image}",
            "ready": c.ready,
            "started": c.proc is not None and c.started,
            "restartCount": c.restart_count,
            "state": c.state,
            "lastState": c.last_state,
        }
        if c.proc is not None:
            st["containerID"] = f"localcluster://{c.proc.pid}"
        elif "terminated" in c.state:
            st["containerID"] = c.state["terminated"]["containerID"]
        return st

    def _status(self) -> Obj:
        with self._lock:
            current = list((self.pod.get("status") or {}).get("conditions") or [])
        # JSON merge patch replaces lists whole: keep conditions others own (PodScheduled).
        conditions = [c for c in current if c.get("type") not in self.conditions]
        conditions += list(self.conditions.values())
        status: Obj = {
            "phase": self.phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.start_time or None,
            "conditions": conditions,
            "containerStatuses": [self._container_status(c) for c in self.containers],
        }
        if self.init_containers:
            status["initContainerStatuses"] = [
                self._container_status(c) for c in self.init_containers
            ]
        return status

    def _push_status(self) -> None:
        status = self._status()
        comparable = {k: v for k, v in status.items() if k != "conditions"}
        comparable["conds"] = [(c["type"], c["status"]) for c in status["conditions"]]
        if comparable == self._last_status:
            return
        try:
            updated = self.ctx.client.merge_patch(
                f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}/status", {"status": status}
            )
        except ApiError as e:
            if e.status != 404:
                log.warning("status update for %s/%s failed: %s", self.ns, self.pod_name, e)
            return
        with self._lock:
            if updated.get("metadata", {}).get("uid") == self.uid:
                self.pod = {**self.pod, "status": updated.get("status", {})}
        self._last_status = comparable
