"""A small validator for the structural OpenAPI v3 subset our CRD uses.

`jsonschema` is not a dependency, and it would not understand `nullable` or
`x-kubernetes-preserve-unknown-fields` anyway. This checks what the API server checks for the
keywords crdgen emits (CEL rules excepted), so tests can validate defaults, the example fleet
and generated specs against the CRD itself rather than only against pydantic.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

PRESERVE = "x-kubernetes-preserve-unknown-fields"

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def _is_type(value: object, kind: str) -> bool:
    # bool is an int in Python, not in JSON.
    if kind in {"integer", "number"} and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[kind])


def validate(value: Any, schema: Mapping[str, Any], path: str = "") -> list[str]:
    """Errors for `value` under `schema`; an empty list means valid."""
    where = path or "<root>"
    if value is None:
        return [] if schema.get("nullable") else [f"{where}: null is not allowed"]
    kind = schema.get("type")
    if kind is not None and not _is_type(value, kind):
        return [f"{where}: expected {kind}, got {type(value).__name__}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']!r}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']!r}")
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{where}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: longer than {schema['maxLength']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} > maximum {schema['maximum']}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += validate(item, schema["items"], f"{path}[{i}]")
    # `metadata: {type: object}` has no properties: the API server validates it itself.
    opaque = "properties" not in schema and "additionalProperties" not in schema
    if isinstance(value, dict) and not schema.get(PRESERVE) and not opaque:
        props: Mapping[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{where}: missing required {name!r}")
        for name, item in value.items():
            if name in props:
                errors += validate(item, props[name], f"{path}.{name}")
            elif isinstance(extra, Mapping):
                errors += validate(item, extra, f"{path}.{name}")
            else:
                # The API server would prune it silently; for our tests that is a bug.
                errors.append(f"{where}: unknown field {name!r}")
    return errors


def apply_defaults(value: Any, schema: Mapping[str, Any]) -> Any:
    """The API server's structural defaulting: fill absent properties top-down."""
    if isinstance(value, dict) and not schema.get(PRESERVE):
        props: Mapping[str, Any] = schema.get("properties", {})
        out = dict(value)
        for name, sub in props.items():
            if name not in out and "default" in sub:
                out[name] = sub["default"]
            if name in out:
                out[name] = apply_defaults(out[name], sub)
        return out
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(v, schema["items"]) for v in value]
    return value
