"""The monitoring bundle's generated files, from their sources in this module and in
deploy/monitoring/alerts.yaml:

    python -m workerfleet_dev.monitoring   # (make crds) writes the files below

- deploy/monitoring/prometheusrule.yaml: alerts.yaml's groups as a PrometheusRule;
- deploy/monitoring/grafana-dashboard.json: the dashboard, from PANELS.

tests/unit/test_monitoring.py checks the files are current, that promtool accepts every
expression, and that every metric they name is one the worker or the operator exports.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "deploy" / "monitoring"
ALERTS = BUNDLE / "alerts.yaml"
RULE = BUNDLE / "prometheusrule.yaml"
DASHBOARD = BUNDLE / "grafana-dashboard.json"
NS = 'namespace=~"$namespace"'  # the dashboard's namespace variable

# (title, unit, [(expression, legend)], kind); each row of the dashboard is one line here.
PANELS: list[tuple[str, str, list[tuple[str, str]], str]] = [
    ("Fleet phase", "none",
     [("max by (namespace, fleet, phase) (workerfleet_fleet_phase{" + NS + "})",
       "{{fleet}}: {{phase}}")], "table"),
    ("Time in phase", "s",
     [("max by (namespace, fleet) (workerfleet_fleet_phase_seconds{" + NS + "})", "{{fleet}}")],
     "timeseries"),
    ("Stalled fleets", "none",
     [("max by (namespace, fleet, reason) (workerfleet_fleet_stalled{" + NS + "})",
       "{{fleet}}: {{reason}}")], "table"),
    ("Breaking migration waiting for drain", "s",
     [("max by (namespace, fleet, migration) (workerfleet_fleet_migration_wait_seconds{" + NS
       + "})", "{{fleet}} {{migration}}")], "timeseries"),
    ("Jobs by state", "none",
     [("sum by (state) (max by (task, queue, state) (fleet_worker_queue_jobs{" + NS + "}))",
       "{{state}}")], "timeseries"),
    ("Oldest waiting job, by task and queue", "s",
     [("max by (task, queue) (fleet_worker_queue_oldest_waiting_seconds{" + NS + "})",
       "{{task}} {{queue}}")], "timeseries"),
    ("Outcomes per second, by task", "ops",
     [("sum by (task, outcome) (rate(fleet_worker_task_outcomes_total{" + NS + "}[5m]))",
       "{{task}} {{outcome}}")], "timeseries"),
    ("Jobs running, by pod", "none",
     [("sum by (pod) (fleet_worker_jobs_running{" + NS + "})", "{{pod}}")], "timeseries"),
    ("Heartbeat age, by pod", "s",
     [("max by (pod) (fleet_worker_heartbeat_age_seconds{" + NS + "})", "{{pod}}")],
     "timeseries"),
    ("Pools by state", "none",
     [("sum by (state) (fleet_worker_pool_state{" + NS + "})", "{{state}}")], "timeseries"),
    ("Pools declared dead (10 min)", "none",
     [("sum(increase(fleet_worker_pools_swept_total{" + NS + "}[10m]))", "dead pools")],
     "stat"),
    ("Worker schema state", "none",
     [("sum by (state) (fleet_worker_schema_state{" + NS + "})", "{{state}}")], "timeseries"),
    ("Completions rejected (fenced attempts)", "ops",
     [("sum(rate(fleet_worker_completions_rejected_total{" + NS + "}[5m]))", "rejected")],
     "timeseries"),
    ("Operator reconcile latency", "s",
     [("histogram_quantile(0.99, sum by (le) (rate(workerfleet_reconcile_seconds_bucket[5m])))",
       "p99"),
      ("histogram_quantile(0.5, sum by (le) (rate(workerfleet_reconcile_seconds_bucket[5m])))",
       "p50")], "timeseries"),
]  # fmt: skip


_NAMESPACES = "label_values(fleet_worker_pool_state, namespace)"
_VARIABLES = [
    {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
    {"name": "namespace", "type": "query", "label": "Namespace", "multi": True,
     "includeAll": True, "allValue": ".+",
     "datasource": {"type": "prometheus", "uid": "${datasource}"},
     "query": {"query": _NAMESPACES, "refId": "namespaces"}, "definition": _NAMESPACES},
]  # fmt: skip


def prometheus_rule() -> dict[str, Any]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "workerfleet", "labels": {"app.kubernetes.io/part-of": "workerfleet"}},
        "spec": {"groups": groups},
    }


def dashboard() -> dict[str, Any]:
    panels = []
    for i, (title, unit, targets, kind) in enumerate(PANELS):
        panels.append({
            "id": i + 1,
            "title": title,
            "type": kind,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [
                {"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend,
                 "instant": kind in ("table", "stat")}
                for j, (expr, legend) in enumerate(targets)
            ],
        })  # fmt: skip
    return {
        "title": "WorkerFleet",
        "uid": "workerfleet",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "tags": ["workerfleet", "postgresql", "jobs"],
        "templating": {"list": _VARIABLES},
        "panels": panels,
    }


def rendered() -> dict[Path, str]:
    rule = "# Generated from alerts.yaml by `python -m workerfleet_dev.monitoring`.\n"
    return {
        RULE: rule + yaml.safe_dump(prometheus_rule(), sort_keys=False, width=1000),
        DASHBOARD: json.dumps(dashboard(), indent=2) + "\n",
    }


def main() -> int:
    for path, text in rendered().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
