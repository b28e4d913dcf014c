"""Container environment: env, envFrom, valueFrom (Secrets, ConfigMaps, downward API)
and $(VAR) expansion, the way the kubelet assembles it."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from typing import Any

from localcluster.kube import ApiError, Client, Obj


class ConfigError(Exception):
    """Maps to the CreateContainerConfigError waiting reason."""


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(s: str, env: Mapping[str, str]) -> str:
    """Kubernetes $(VAR) expansion: known names substitute, unknown stay, $$ escapes."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, s)


def field_ref(pod: Obj, path: str) -> str:
    meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    simple: dict[str, Callable[[], Any]] = {
        "metadata.name": lambda: meta["name"],
        "metadata.namespace": lambda: meta["namespace"],
        "metadata.uid": lambda: meta["uid"],
        "spec.nodeName": lambda: spec.get("nodeName", ""),
        "spec.serviceAccountName": lambda: spec.get("serviceAccountName", ""),
        "status.podIP": lambda: status.get("podIP", ""),
        "status.hostIP": lambda: status.get("hostIP", ""),
    }
    if path in simple:
        return str(simple[path]())
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise ConfigError(f"unsupported fieldRef {path!r}")


class _Sources:
    """Caches ConfigMaps/Secrets for one container start."""

    def __init__(self, client: Client, namespace: str) -> None:
        self.client, self.namespace = client, namespace
        self.cache: dict[tuple[str, str], dict[str, str] | None] = {}

    def data(self, kind: str, name: str) -> dict[str, str] | None:
        key = (kind, name)
        if key not in self.cache:
            plural = "secrets" if kind == "Secret" else "configmaps"
            try:
                obj = self.client.get(f"/api/v1/namespaces/{self.namespace}/{plural}/{name}")
            except ApiError as e:
                if e.status != 404:
                    raise
                self.cache[key] = None
                return None
            data = {k: str(v) for k, v in (obj.get("data") or {}).items()}
            if kind == "Secret":
                data = {k: base64.b64decode(v).decode() for k, v in data.items()}
                for k, v in (obj.get("stringData") or {}).items():
                    data[k] = str(v)
            self.cache[key] = data
        return self.cache[key]

    def key(self, kind: str, ref: Obj) -> str | None:
        data = self.data(kind, ref["name"])
        optional = bool(ref.get("optional"))
        if data is None:
            if optional:
                return None
            raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
        if ref["key"] not in data:
            if optional:
                return None
            raise ConfigError(f"couldn't find key {ref['key']} in {kind} {ref['name']}")
        return data[ref["key"]]


def container_env(
    client: Client, pod: Obj, container: Obj, base: Mapping[str, str]
) -> dict[str, str]:
    """The process environment: base (image env etc.), then envFrom, then env, in order."""
    sources = _Sources(client, pod["metadata"]["namespace"])
    env = dict(base)
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if field not in src:
                continue
            ref = src[field]
            data = sources.data(kind, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
            env.update({prefix + k: v for k, v in data.items()})
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        value = _value_from(sources, pod, container, name, var["valueFrom"])
        if value is not None:
            env[name] = value
    return env


def _value_from(sources: _Sources, pod: Obj, container: Obj, name: str, vf: Obj) -> str | None:
    if "fieldRef" in vf:
        return field_ref(pod, vf["fieldRef"]["fieldPath"])
    if "secretKeyRef" in vf:
        return sources.key("Secret", vf["secretKeyRef"])
    if "configMapKeyRef" in vf:
        return sources.key("ConfigMap", vf["configMapKeyRef"])
    if "resourceFieldRef" in vf:
        # No cgroups here: report the declared value (or 0) rather than a made-up number.
        res = vf["resourceFieldRef"]["resource"]  # e.g. limits.cpu
        section, _, rname = res.partition(".")
        return str(((container.get("resources") or {}).get(section) or {}).get(rname, "0"))
    raise ConfigError(f"unsupported valueFrom for {name}")
