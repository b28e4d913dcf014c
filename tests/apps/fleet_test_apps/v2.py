from fleet_test_apps.common import build

app = build("2.0.0", "migrations_v2", "name")
