"""The migration header and the compatibility rule (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_worker.app import App, OnOrphan
from fleet_worker.catalog import Catalog, Migration, load_directory, parse_header
from fleet_worker.compat import AppliedMigration, assess
from fleet_worker.errors import CatalogError, InvalidIdentifierError
from fleet_worker.identifiers import validate_schema_name
from fleet_worker.queue import backoff_seconds


def test_header_markers() -> None:
    assert parse_header("--! breaking\nalter table x drop column y;", "f") is True
    assert parse_header("\n--! safe\n-- comment\ncreate table t();", "f") is False
    with pytest.raises(CatalogError, match="exactly one"):
        parse_header("-- breaking\ncreate table t();", "f")
    with pytest.raises(CatalogError, match="exactly one"):
        parse_header("--! safe breaking\n", "f")
    with pytest.raises(CatalogError, match="unknown header flag"):
        parse_header("--! safe no-transaction\n", "f")


def test_directory_rules(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("--! safe\nselect 1;")
    (tmp_path / "0003_c.sql").write_text("--! safe\nselect 1;")
    with pytest.raises(CatalogError, match="without gaps"):
        load_directory(tmp_path, "app")
    (tmp_path / "0002_b.sql").write_text("--! breaking\nselect 1;")
    ms = load_directory(tmp_path, "app")
    assert [(m.id, m.breaking) for m in ms] == [
        ("app/0001", False),
        ("app/0002", True),
        ("app/0003", False),
    ]
    (tmp_path / "02_dup.sql").write_text("--! safe\n")
    with pytest.raises(CatalogError, match="also used"):
        load_directory(tmp_path, "app")


def test_core_catalog_loads_and_comes_first(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("--! safe\nselect 1;")
    catalog = Catalog.load(tmp_path)
    assert catalog.ids[0] == "core/0001" and catalog.ids[-1] == "app/0001"


def m(mid: str, breaking: bool = False, checksum: str = "c") -> Migration:
    return Migration(id=mid, name=mid, breaking=breaking, checksum=checksum, sql="")


def a(mig: Migration) -> AppliedMigration:
    return AppliedMigration(mig.id, mig.name, mig.breaking, mig.checksum)


def test_rule_cases() -> None:
    m1, m2, m3b = m("app/0001"), m("app/0002"), m("app/0003", breaking=True)
    old = Catalog((m1, m2))
    new = Catalog((m1, m2, m3b))
    # D > K with only safe unknowns: runs.
    assert assess(Catalog((m1,)), [a(m1), a(m2)]).compatible
    # D > K with a breaking unknown: out of date.
    state = assess(old, [a(m1), a(m2), a(m3b)])
    assert state.out_of_date and not state.compatible and "app/0003" in state.describe()
    # D < K: pending; the safe prefix is what self mode applies at once.
    state = assess(new, [a(m1)])
    assert [x.id for x in state.pending] == ["app/0002", "app/0003"]
    assert [x.id for x in state.safe_prefix] == ["app/0002"]
    assert state.first_breaking == m3b
    # A changed file is an error, never a warning.
    state = assess(new, [a(m1), AppliedMigration("app/0002", "app/0002", False, "other")])
    assert state.mismatched and not state.compatible and "checksum" in state.describe()


migrations = st.lists(st.booleans(), min_size=1, max_size=8).map(
    lambda flags: [m(f"app/{i + 1:04d}", b) for i, b in enumerate(flags)]
)


@given(migrations, st.integers(0, 8), st.integers(0, 8))
def test_rule_properties(all_migrations: list[Migration], known: int, applied: int) -> None:
    """Catalog = first `known` migrations, database = first `applied` ones."""
    known = min(known, len(all_migrations))
    applied = min(applied, len(all_migrations))
    catalog = Catalog(tuple(all_migrations[:known]))
    state = assess(catalog, [a(x) for x in all_migrations[:applied]])
    unknown = all_migrations[known:applied]
    assert state.out_of_date == any(x.breaking for x in unknown)
    assert [x.id for x in state.pending] == [x.id for x in all_migrations[applied:known]]
    assert state.compatible == (applied >= known and not any(x.breaking for x in unknown))
    assert all(not x.breaking for x in state.safe_prefix)


@pytest.mark.parametrize("name", ["fleet_worker", "a", "_x1", "q" * 63])
def test_valid_schema_names(name: str) -> None:
    assert validate_schema_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "1abc", "a-b", 'a"b', "pg_x", "q" * 64, "a b"])
def test_invalid_schema_names(name: str) -> None:
    with pytest.raises(InvalidIdentifierError):
        validate_schema_name(name)


@given(st.integers(1, 100), st.floats(0.001, 10), st.floats(10, 10_000))
def test_backoff_grows_and_is_capped(attempts: int, base: float, cap: float) -> None:
    d = backoff_seconds(attempts, base, cap)
    assert 0 < d <= cap
    assert backoff_seconds(attempts + 1, base, cap) >= d


def test_an_unknown_orphan_policy_is_refused_with_the_choices() -> None:
    app = App(name="t")
    with pytest.raises(ValueError, match=r"on_orphan must be one of 'retry', 'fail', not 'twice'"):
        app.task("charge", on_orphan="twice")


def test_the_pool_records_only_the_tasks_that_fail_their_orphans() -> None:
    app = App(name="t")
    app.task("charge", on_orphan="fail")(lambda payload: None)
    app.task("refund", on_orphan=OnOrphan.FAIL)(lambda payload: None)
    app.task("email")(lambda payload: None)
    assert app.orphan_fail_tasks() == ["charge", "refund"]
