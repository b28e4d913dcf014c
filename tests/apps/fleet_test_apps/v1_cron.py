"""Release 1 with a crontab: `work` every minute. Its own module, so the other tests' workers
enqueue nothing on their own."""

from fleet_test_apps.common import build

app = build("1.0.0", "migrations_v1", "name")
app.cron("* * * * *", "work", name="every-minute", timezone="UTC", payload={"cron": True})
