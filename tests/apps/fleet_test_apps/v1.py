from fleet_test_apps.common import build

app = build("1.0.0", "migrations_v1", "name")
