"""The monitoring bundle (deploy/monitoring) with the real promtool (built from the Go module
proxy): the alert rules load and pass their unit tests, the tests catch a wrong threshold,
every dashboard query parses, the generated files are current, and every metric the rules
and the dashboard name is one the worker or the operator exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from fleet_worker.health import Counters, Snapshot, render_metrics
from fleet_worker.queue_stats import QueueStats
from workerfleet_dev import monitoring
from workerfleet_dev.gotools import PROMTOOL, ensure
from workerfleet_operator.metrics import Metrics
from workerfleet_operator.models import Condition, WorkerFleetStatus

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests" / "monitoring" / "alerts_test.yaml"
METRIC = re.compile(r"\b((?:fleet_worker|workerfleet)_[a-z_]+)\b")


@pytest.fixture(scope="module")
def promtool() -> Path:
    return ensure(PROMTOOL)


def run(promtool: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), *args], capture_output=True, text=True, timeout=120,
                          check=False, cwd=cwd)  # fmt: skip


def test_the_rules_load_and_pass_their_tests(promtool: Path) -> None:
    checked = run(promtool, "check", "rules", str(monitoring.ALERTS))
    assert checked.returncode == 0 and "SUCCESS: 6 rules found" in checked.stdout, checked.stdout
    tested = run(promtool, "test", "rules", TESTS.name, cwd=TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_the_rule_tests_catch_a_wrong_threshold(promtool: Path, tmp_path: Path) -> None:
    """The suite is not vacuous: the old-jobs alert at 6000 s instead of 600 s fails it."""
    wrong = monitoring.ALERTS.read_text().replace(
        "(fleet_worker_queue_oldest_waiting_seconds) > 600",
        "(fleet_worker_queue_oldest_waiting_seconds) > 6000",
    )
    assert wrong != monitoring.ALERTS.read_text()
    (tmp_path / "alerts.yaml").write_text(wrong)
    suite = yaml.safe_load(TESTS.read_text())
    suite["rule_files"] = ["alerts.yaml"]
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(suite))
    tested = run(promtool, "test", "rules", "t.yaml", cwd=tmp_path)
    assert tested.returncode != 0
    assert "alertname: WorkerFleetJobsWaitingTooLong" in tested.stdout + tested.stderr


def dashboard_queries() -> list[str]:
    board = monitoring.dashboard()
    return [t["expr"] for p in board["panels"] for t in p["targets"]]


def test_every_dashboard_query_parses(promtool: Path, tmp_path: Path) -> None:
    # As recording rules, promtool parses each; the namespace variable as Grafana's "All".
    rules = [
        {"record": f"dashboard:query_{i}", "expr": q.replace("$namespace", ".+")}
        for i, q in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = run(promtool, "check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout


def test_the_generated_files_are_current() -> None:
    for path, text in monitoring.rendered().items():
        assert path.read_text() == text, f"{path.name} is stale: run `make crds`"


def exported_names() -> set[str]:
    counters = Counters(pools_swept=1)
    counters.outcomes["t", "completed"] += 1
    stats = QueueStats(1.0, {("t", "", "waiting"): 1}, {("t", ""): 2.0})
    snap = Snapshot(pool_id="p", state="active", fenced=False, stopping=False,
                    counters=counters, running=0, held=0, heartbeat_age_s=0.1,
                    schema_state="compatible", queue=stats)  # fmt: skip
    operator = Metrics()
    operator.observe_reconcile(0.01, "ok", "NoAction", {"plan": 0.001})
    status = WorkerFleetStatus(
        phase="Migrating", migration_wait_started_at="2026-01-01T00:00:00+00:00",
        migration_wait_for="app/0003",
        conditions=[Condition(type="Stalled", status="True", reason="MigrationFailed",
                              message="m", observed_generation=1,
                              last_transition_time="2026-01-01T00:00:00Z")],
    )  # fmt: skip
    operator.observe_fleet("ns", "shop", status)
    text = render_metrics(snap) + operator.render()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def test_every_metric_named_is_one_that_is_exported() -> None:
    named = set()
    for expr in [
        *dashboard_queries(),
        *[
            r["expr"]
            for g in yaml.safe_load(monitoring.ALERTS.read_text())["groups"]
            for r in g["rules"]
        ],
    ]:
        named |= set(METRIC.findall(expr))
    assert len(named) >= 12
    missing = named - exported_names()
    assert not missing, f"named by the bundle but exported by nothing: {sorted(missing)}"


def test_the_kustomization_lists_every_file_of_the_bundle() -> None:
    """(No kustomize binary here: checked by structure. The objects are checked above.)"""
    k = yaml.safe_load((monitoring.BUNDLE / "kustomization.yaml").read_text())
    [generated] = k["configMapGenerator"]
    listed = {*k["resources"], *generated["files"]}
    assert listed == {"podmonitor.yaml", "prometheusrule.yaml", "grafana-dashboard.json"}
    monitor = yaml.safe_load((monitoring.BUNDLE / "podmonitor.yaml").read_text())
    # The operator names the worker container's port `health` and labels the pods so.
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "health"
    assert monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/component": "worker"}
