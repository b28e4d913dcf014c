"""The WorkerFleet CRD: generated from the models, structural, current, and in step with them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from fleet_worker.durations import parse_duration
from tests.unit.openapi_subset import PRESERVE, apply_defaults, validate
from workerfleet_operator import crdgen
from workerfleet_operator.models import (
    APP_PATTERN,
    DURATION_PATTERN,
    GROUP,
    KIND,
    PLURAL,
    ROLLOUT_VALIDATIONS,
    SCHEMA_PATTERN,
    SHORT_NAMES,
    SPEC_VALIDATIONS,
    TEMPLATE_VALIDATIONS,
    VERSION,
    VERSION_PATTERN,
    WorkerFleetSpec,
    WorkerFleetStatus,
)

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "workerfleet.yaml"
DURATION_FIELDS = [
    "heartbeatInterval",
    "sweepInterval",
    "sweepThreshold",
    "maxMigrationWaitTime",
    "gracefulShutdownTimeout",
]


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return crdgen.build_crd()


def _version(crd: dict[str, Any]) -> dict[str, Any]:
    [version] = crd["spec"]["versions"]
    return dict(version)


def _root(crd: dict[str, Any]) -> dict[str, Any]:
    return dict(_version(crd)["schema"]["openAPIV3Schema"])


def _spec(crd: dict[str, Any]) -> dict[str, Any]:
    return dict(_root(crd)["properties"]["spec"])


def _walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path."""
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}.*")


# --- the committed file --------------------------------------------------------------------


def test_committed_crd_is_current() -> None:
    assert CRD_FILE.exists(), "crds/workerfleet.yaml is missing: run `make crds`"
    assert CRD_FILE.read_text() == crdgen.render(), (
        "crds/workerfleet.yaml is stale: the models changed; run `make crds` and commit it"
    )


def test_render_is_deterministic_and_parses() -> None:
    text = crdgen.render()
    assert text == crdgen.render()
    assert yaml.safe_load(text) == crdgen.build_crd()


def test_check_flag_reports_missing_stale_and_current(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "crds" / "workerfleet.yaml"
    assert crdgen.main(["--check", "--output", str(out)]) == 1
    assert "missing" in capsys.readouterr().err
    assert crdgen.main(["--output", str(out)]) == 0
    assert out.read_text() == crdgen.render()
    assert crdgen.main(["--check", "--output", str(out)]) == 0
    out.write_text(out.read_text().replace("default: 10s", "default: 11s"))
    assert crdgen.main(["--check", "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "stale" in err
    assert "make crds" in err


# --- the CRD envelope ----------------------------------------------------------------------


def test_names_scope_and_version(crd: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    spec = crd["spec"]
    assert spec["group"] == GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == KIND
    assert spec["names"]["plural"] == PLURAL
    assert spec["names"]["shortNames"] == SHORT_NAMES
    version = _version(crd)
    assert (version["name"], version["served"], version["storage"]) == (VERSION, True, True)
    assert version["subresources"]["status"] == {}


def test_printer_columns_point_at_real_fields(crd: dict[str, Any]) -> None:
    columns = {c["name"]: c for c in _version(crd)["additionalPrinterColumns"]}
    assert list(columns)[:7] == [
        "Desired",
        "Current",
        "Ready",
        "Replicas",
        "Phase",
        "Schema",
        "Age",
    ]
    assert columns["Age"] == {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
    }
    root = _root(crd)
    for column in columns.values():
        if column["jsonPath"].startswith(".metadata."):
            continue
        node = root
        for part in column["jsonPath"].strip(".").split("."):
            assert part in node.get("properties", {}), f"{column['name']}: {column['jsonPath']}"
            node = node["properties"][part]
        # The column type must match the field's, or kubectl prints <invalid>.
        assert node["type"] == column["type"], column


def test_scale_subresource_paths_exist(crd: dict[str, Any]) -> None:
    scale = _version(crd)["subresources"]["scale"]
    root = _root(crd)
    assert root["properties"]["spec"]["properties"]["replicas"]["type"] == "integer"
    assert root["properties"]["status"]["properties"]["replicas"]["type"] == "integer"
    assert scale == {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}


# --- structural schema ---------------------------------------------------------------------

_FORBIDDEN = {"$ref", "$defs", "anyOf", "allOf", "oneOf", "not", "title", "const", "preserve"}


def test_schema_is_structural(crd: dict[str, Any]) -> None:
    for path, node in _walk(_root(crd)):
        assert not _FORBIDDEN & node.keys(), f"{path}: {sorted(_FORBIDDEN & node.keys())}"
        assert "type" in node or node.get(PRESERVE) is True, f"{path}: no type"
        if node.get("type") == "array":
            assert isinstance(node.get("items"), dict), f"{path}: array without items"
        if node.get("type") == "object":
            assert not ("properties" in node and "additionalProperties" in node), path
            # additionalProperties is a schema (maps) or absent, never a bare true/false.
            assert isinstance(node.get("additionalProperties", {}), dict), path
            has_shape = "properties" in node or "additionalProperties" in node
            assert has_shape or node.get(PRESERVE) or path == ".metadata", (
                f"{path}: a free-form object would have all its fields pruned"
            )
        for name in node.get("required", []):
            assert name in node.get("properties", {}), f"{path}: required {name} undefined"


def test_preserved_fields_keep_unknown_fields(crd: dict[str, Any]) -> None:
    template = _spec(crd)["properties"]["template"]["properties"]
    for name in ("resources", "affinity", "securityContext"):
        assert template[name] == {"type": "object", "nullable": True, PRESERVE: True}, name
    # Kept as written, with the one field a CEL rule reads typed.
    security = template["containerSecurityContext"]
    assert security[PRESERVE] is True and security["type"] == "object"
    assert security["properties"] == {"privileged": {"type": "boolean", "nullable": True}}
    for name in ("env", "tolerations"):
        assert template[name] == {
            "type": "array",
            "items": {"type": "object", PRESERVE: True},
        }, name
    # Plain string maps stay typed.
    assert template["labels"]["additionalProperties"] == {"type": "string"}
    assert template["nodeSelector"]["additionalProperties"] == {"type": "string"}


def test_required_fields_patterns_and_ranges(crd: dict[str, Any]) -> None:
    assert _root(crd)["required"] == ["spec"]
    spec = _spec(crd)
    props = spec["properties"]
    assert set(spec["required"]) == {"version", "image", "database", "app"}
    assert props["database"]["required"] == ["secretRef"]
    assert props["database"]["properties"]["secretRef"]["required"] == ["name"]
    assert props["version"]["pattern"] == VERSION_PATTERN
    assert props["schema"]["pattern"] == SCHEMA_PATTERN
    assert props["app"]["pattern"] == APP_PATTERN
    for name in DURATION_FIELDS:
        assert props[name]["pattern"] == DURATION_PATTERN, name
        assert props[name]["maxLength"] == 32, name
    assert (props["replicas"]["minimum"], props["replicas"]["maximum"]) == (0, 1000)
    assert props["concurrency"]["minimum"] == 1
    rollout = props["rollout"]["properties"]
    assert rollout["breakingMigrationApproval"]["enum"] == ["Automatic", "Manual"]
    assert rollout["progressDeadlineSeconds"]["minimum"] == 10


def test_descriptions_survive_and_titles_do_not(crd: dict[str, Any]) -> None:
    props = _spec(crd)["properties"]
    assert props["version"]["description"] == "the release to run; bump it"
    # A description given beside a $ref (the field's) wins over the model's.
    assert props["database"]["properties"]["secretRef"]["description"].startswith("Secret key")


def test_defaults_match_the_models(crd: dict[str, Any]) -> None:
    """What the API server fills in is what pydantic would have used."""
    spec_schema = _spec(crd)
    minimal = {
        "version": "1",
        "image": "img",
        "app": "pkg.app",
        "database": {"secretRef": {"name": "db"}},
    }
    defaulted = apply_defaults(minimal, spec_schema)
    expected = WorkerFleetSpec.model_validate(minimal).model_dump(
        by_alias=True, mode="json", exclude_none=True
    )  # an unset optional field (keepHistory) is absent, not null
    # The API server defaults only what the schema says; pydantic also fills the optional
    # template fields, which the operator treats the same when absent.
    expected.pop("template")
    expected.pop("args")
    assert defaulted == expected
    assert validate(defaulted, spec_schema) == []


def test_every_default_validates_against_its_schema(crd: dict[str, Any]) -> None:
    # The API server rejects a CRD whose defaults do not validate.
    for path, node in _walk(_root(crd)):
        if "default" in node:
            assert validate(apply_defaults(node["default"], node), node, path) == [], path


def test_status_has_no_defaults_and_accepts_the_model(crd: dict[str, Any]) -> None:
    """No invented status, but one truth: a fleet the operator has not written to has
    observed generation 0 (kstatus needs the field to call a new fleet InProgress)."""
    status_schema = _root(crd)["properties"]["status"]
    assert [p for p, n in _walk(status_schema) if "default" in n] == [""]
    assert status_schema["default"] == {"observedGeneration": 0}
    status = WorkerFleetStatus.model_validate(
        {
            "observedGeneration": 3,
            "phase": "Rolling",
            "currentVersion": "1",
            "schemaVersion": "0002->0003",
            "schema": {"applied": ["0001", "0002"], "pendingBreaking": ["0003"]},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "Rolling",
                    "message": "1 of 3 pods updated",
                    "observedGeneration": 3,
                    "lastTransitionTime": "2025-01-01T00:00:00Z",
                }
            ],
        }
    )
    # With the nulls (nullable) and without them (exclude_none): both are what a patch sends.
    for dumped in (
        status.model_dump(by_alias=True, mode="json"),
        status.model_dump(by_alias=True, mode="json", exclude_none=True),
    ):
        assert validate(dumped, status_schema) == []


# --- CEL ------------------------------------------------------------------------------------


def _rule_fields(rule: str) -> set[str]:
    return set(re.findall(r"\bself\.([A-Za-z_][A-Za-z0-9_]*)", rule))


def test_cel_rules_are_attached_and_name_real_fields(crd: dict[str, Any]) -> None:
    spec = _spec(crd)
    rollout = spec["properties"]["rollout"]
    assert spec["x-kubernetes-validations"] == SPEC_VALIDATIONS
    assert rollout["x-kubernetes-validations"] == ROLLOUT_VALIDATIONS
    for node in (spec, rollout):
        for validation in node["x-kubernetes-validations"]:
            assert validation["message"]
            fields = _rule_fields(validation["rule"])
            assert fields, validation
            for name in fields:
                prop = node["properties"].get(name)
                assert prop is not None, f"rule names unknown field {name}"
                # CEL fails with "no such key" on an absent field: it must always be there.
                assert "default" in prop or name in node.get("required", []), name
    # Rollout is defaulted as a block so its CEL rule sees the defaults too; the API server
    # checks that default against the rule as written, so it must spell the fields out.
    assert rollout["default"] == {
        "maxSurge": 1,
        "maxUnavailable": 0,
        "progressDeadlineSeconds": 600,
        "breakingMigrationApproval": "Automatic",
    }
    for validation in rollout["x-kubernetes-validations"]:
        assert _rule_fields(validation["rule"]) <= rollout["default"].keys()


def test_duration_rules_use_duration_fields(crd: dict[str, Any]) -> None:
    spec = _spec(crd)
    for rule in spec["x-kubernetes-validations"]:
        fields = _rule_fields(rule["rule"])
        # duration() of a field that is not a duration would fail at admission time.
        for match in re.findall(r"duration\(self\.([A-Za-z]+)\)", rule["rule"]):
            assert match in DURATION_FIELDS, match
        assert fields <= set(DURATION_FIELDS) | {"migrationJob"}
        assert rule["fieldPath"].lstrip(".").split(".")[0] in spec["properties"]


def test_template_rules_refuse_privileged_containers(crd: dict[str, Any]) -> None:
    template = _spec(crd)["properties"]["template"]
    assert template["x-kubernetes-validations"] == TEMPLATE_VALIDATIONS
    for validation in TEMPLATE_VALIDATIONS:
        for name in _rule_fields(validation["rule"]):
            assert name in template["properties"], name


# --- the converter refuses what a CRD cannot express ----------------------------------------


class _Loose(BaseModel):
    blob: dict[str, Any]


class _Union(BaseModel):
    value: int | str


class _Node(BaseModel):
    children: list[_Node] = Field(default_factory=list)


class _Fine(BaseModel):
    count: int = Field(3, gt=0)
    tags: dict[str, int] = Field(default_factory=dict)
    extra: list[Any] = Field(default_factory=list, json_schema_extra={"preserve": True})


@pytest.mark.parametrize(
    ("model", "message"),
    [(_Loose, "free-form object"), (_Union, "anyOf"), (_Node, "recursive")],
)
def test_converter_rejects_non_structural_models(model: type[BaseModel], message: str) -> None:
    with pytest.raises(crdgen.SchemaError, match=message):
        crdgen.model_schema(model)


def test_converter_handles_exclusive_bounds_maps_and_untyped_preserved_arrays() -> None:
    schema = crdgen.model_schema(_Fine)
    props = schema["properties"]
    assert props["count"] == {
        "type": "integer",
        "minimum": 0,
        "exclusiveMinimum": True,
        "default": 3,
    }
    assert props["tags"]["additionalProperties"] == {"type": "integer"}
    assert props["extra"] == {"type": "array", "items": {PRESERVE: True}}


# --- properties -----------------------------------------------------------------------------

_durations = st.from_regex(DURATION_PATTERN, fullmatch=True).filter(lambda s: len(s) <= 32)


@given(_durations)
def test_every_duration_the_crd_admits_the_worker_parses(text: str) -> None:
    """The API server accepts exactly the pattern; workers and the operator must parse all of
    it (CEL's duration() reads the same Go syntax)."""
    assert parse_duration(text) >= 0


_specs = st.fixed_dictionaries(
    {
        "version": st.from_regex(VERSION_PATTERN, fullmatch=True),
        "image": st.text(min_size=1, max_size=64),
        "replicas": st.integers(0, 1000),
        "database": st.fixed_dictionaries(
            {"secretRef": st.fixed_dictionaries({"name": st.text(min_size=1, max_size=253)})}
        ),
        "schema": st.from_regex(SCHEMA_PATTERN, fullmatch=True),
        "app": st.from_regex(APP_PATTERN, fullmatch=True).filter(lambda s: len(s) <= 256),
        "concurrency": st.integers(1, 1000),
        "heartbeatInterval": _durations,
        "sweepThreshold": _durations,
        "rollout": st.fixed_dictionaries(
            {
                "maxSurge": st.integers(0, 100),
                "maxUnavailable": st.integers(0, 100),
                "breakingMigrationApproval": st.sampled_from(["Automatic", "Manual"]),
            }
        ),
        "paused": st.booleans(),
        "template": st.fixed_dictionaries(
            {
                "labels": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
                "resources": st.none() | st.just({"limits": {"cpu": "1"}}),
                "env": st.lists(st.just({"name": "A", "value": "b"}), max_size=2),
            }
        ),
    }
)


_SPEC_SCHEMA = crdgen.spec_schema()


@settings(max_examples=100)
@given(_specs)
def test_specs_pydantic_accepts_pass_the_crd_schema(raw: dict[str, Any]) -> None:
    """The CRD is never stricter than the models (bar CEL): what the operator would accept,
    the API server stores, nulls and preserved blobs included."""
    spec = WorkerFleetSpec.model_validate(raw)
    dumped = spec.model_dump(by_alias=True, mode="json")
    assert validate(dumped, _SPEC_SCHEMA) == []


def test_configuration_reference_is_fresh() -> None:
    """docs/configuration.md is generated from the CRD schema; `make crds` refreshes it."""
    from workerfleet_operator import docgen

    assert docgen.main(["--check"]) == 0, "docs/configuration.md is stale: run `make crds`"
    assert "`spec.rollout.breakingMigrationApproval`" in docgen.render()
