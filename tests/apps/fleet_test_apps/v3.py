from fleet_test_apps.common import build

app = build("3.0.0", "migrations_v3", "title")
