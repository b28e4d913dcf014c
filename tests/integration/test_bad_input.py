"""Bad input gets a clear error and loses nothing."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from fleet_worker.catalog import Catalog
from fleet_worker.db import Schema
from fleet_worker.errors import CatalogError, MigrationError
from fleet_worker.exit_codes import ExitCode
from fleet_worker.migrate import migrate
from fleet_worker.queue import JobSpec, add_job
from tests.conftest import APPS_DIR
from tests.helpers import FAST, WorkerProcess, q, wait_for

pytestmark = pytest.mark.integration
APP_DIR = APPS_DIR / "fleet_test_apps"


def cli(
    *args: str, url: str | None = None, extra_path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{APPS_DIR}:{extra_path or ''}"}
    if url:
        env["DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "fleet_worker.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def install(conn: psycopg.Connection, schema: str) -> Schema:
    s = Schema(schema)
    migrate(conn, s, Catalog.load(APP_DIR / "migrations_v1"))
    return s


def test_add_job_rejects_an_unknown_task_when_given_the_app(
    database_url: str, schema_name: str
) -> None:
    r = cli(
        "add-job", "nope", "--schema", schema_name, "--app", "fleet_test_apps.v1", url=database_url
    )
    assert r.returncode == ExitCode.USAGE
    assert "unknown task 'nope'" in r.stderr and "work" in r.stderr


def test_jobs_for_unknown_tasks_wait_untouched(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    s = install(conn, schema_name)
    job = add_job(conn, JobSpec("from_a_newer_release"), s)
    worker = WorkerProcess(database_url, schema_name, "fleet_test_apps.v1", tmp_path, *FAST)
    try:
        wait_for(
            lambda: q(conn, schema_name, "select 1 from {s}.pools where state = 'active'"),
            what="active",
        )
        add_job(conn, JobSpec("noop"), s)
        wait_for(
            lambda: q(conn, schema_name, "select count(*) from {s}.jobs") == [(1,)],
            what="noop done",
        )
        worker.signal(signal.SIGTERM)
        assert worker.wait() == ExitCode.OK
    finally:
        worker.stop()
    rows = q(conn, schema_name, "select id, attempts, locked_by from {s}.jobs")
    assert rows == [(job, 0, None)]


def test_malformed_payload_fails_permanently_with_a_clear_error(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    s = install(conn, schema_name)
    bad = add_job(conn, JobSpec("strict", {"n": "not a number"}), s)
    good = add_job(conn, JobSpec("strict", {"n": 3}), s)
    worker = WorkerProcess(database_url, schema_name, "fleet_test_apps.v1", tmp_path, *FAST)
    try:
        wait_for(
            lambda: q(conn, schema_name, "select id from {s}.jobs") == [(bad,)],
            what="good job done, bad one kept",
        )
        worker.signal(signal.SIGTERM)
        assert worker.wait() == ExitCode.OK
    finally:
        worker.stop()
    [(attempts, max_attempts, error, locked)] = q(
        conn, schema_name, "select attempts, max_attempts, last_error, locked_by from {s}.jobs"
    )
    assert attempts == max_attempts and locked is None
    assert "malformed payload for task 'strict'" in str(error) and "n" in str(error)
    assert good != bad


def test_add_job_rejects_a_payload_that_is_not_json(database_url: str, schema_name: str) -> None:
    r = cli("add-job", "work", "--payload", "{oops", "--schema", schema_name, url=database_url)
    assert r.returncode == ExitCode.USAGE and "--payload is not valid JSON" in r.stderr


def test_flaky_task_retries_until_it_succeeds(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    s = install(conn, schema_name)
    add_job(conn, JobSpec("flaky", {"succeed_on": 3}), s)
    worker = WorkerProcess(database_url, schema_name, "fleet_test_apps.v1", tmp_path, *FAST)
    try:
        wait_for(
            lambda: q(conn, schema_name, "select count(*) from {s}.jobs") == [(0,)],
            what="flaky job eventually done",
        )
        worker.signal(signal.SIGTERM)
        assert worker.wait() == ExitCode.OK
    finally:
        worker.stop()
    assert worker.log().count("flaky failure on attempt") == 2


@pytest.mark.parametrize("name", ["Bad-Name", "x; drop table jobs", "pg_catalog", "", "a" * 64])
def test_invalid_schema_names_are_refused(database_url: str, name: str) -> None:
    r = cli("status", "--schema", name, url=database_url)
    assert r.returncode == ExitCode.USAGE
    assert "invalid schema name" in r.stderr


def test_unreachable_database_is_a_clear_error() -> None:
    r = cli(
        "run",
        "--app",
        "fleet_test_apps.v1",
        "--health-port",
        "0",
        url="postgresql://nobody@127.0.0.1:1/none",
    )
    assert r.returncode == ExitCode.ERROR
    assert "cannot connect to the database" in r.stderr
    r = cli("status", url="postgresql://nobody@127.0.0.1:1/none")
    assert r.returncode == ExitCode.ERROR
    assert "cannot connect to the database" in r.stderr and "Traceback" not in r.stderr


def test_missing_database_url_is_a_usage_error() -> None:
    r = cli("status")
    assert r.returncode == ExitCode.USAGE and "DATABASE_URL" in r.stderr


def test_a_tampered_migration_is_refused_and_touches_nothing(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    s = install(conn, schema_name)
    job = add_job(conn, JobSpec("work"), s)
    tampered = tmp_path / "migrations"
    shutil.copytree(APP_DIR / "migrations_v1", tampered)
    path = tampered / "0001_ledger.sql"
    path.write_text(path.read_text() + "\n-- an innocent edit\n")
    with pytest.raises(MigrationError, match="checksum mismatch: app/0001"):
        migrate(conn, s, Catalog.load(tampered))
    # The worker refuses to start on it too, with a distinct exit code.
    app_module = tmp_path / "tampered_app.py"
    app_module.write_text(
        "from pathlib import Path\nfrom fleet_test_apps.common import build\n"
        "app = build('1.0.0', 'migrations_v1', 'name')\n"
        f"app.migrations = Path({str(tampered)!r})\n"
    )
    env_app = cli(
        "run",
        "--app",
        "tampered_app",
        "--schema",
        schema_name,
        "--health-port",
        "0",
        url=database_url,
        extra_path=tmp_path,
    )
    assert env_app.returncode == ExitCode.SCHEMA_ERROR
    assert "checksum mismatch" in env_app.stderr
    assert q(conn, schema_name, "select id, attempts, locked_by from {s}.jobs") == [(job, 0, None)]


def test_migration_files_without_a_safe_or_breaking_marker_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_x.sql").write_text("create table t (id int);\n")
    with pytest.raises(CatalogError, match="exactly one of `--! safe` or `--! breaking`"):
        Catalog.load(tmp_path)


def test_a_busy_health_port_is_a_clear_error(database_url: str, schema_name: str) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = cli(
            "run",
            "--app",
            "fleet_test_apps.v1",
            "--schema",
            schema_name,
            "--health-port",
            str(port),
            url=database_url,
        )
    assert r.returncode == ExitCode.ERROR
    assert f"cannot serve health checks on 127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_migration_that_fails_is_a_clear_schema_error(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    bad = tmp_path / "migrations"
    shutil.copytree(APP_DIR / "migrations_v1", bad)
    (bad / "0002_typo.sql").write_text("--! safe\nalter tabel :FLEET_SCHEMA.widgets add x int;\n")
    with pytest.raises(MigrationError, match=r"migration app/0002 \(0002_typo\) failed: syntax"):
        migrate(conn, Schema(schema_name), Catalog.load(bad))
    applied = q(conn, schema_name, "select id from {s}.migrations order by seq")
    # Nothing half-applied:
    assert applied == [(i,) for i in Catalog.load().ids] + [("app/0001",)]


def test_a_malformed_url_never_shows_its_password() -> None:
    r = cli("status", url="postgresql://user:s3cr%zzet@127.0.0.1:1/db")
    assert r.returncode == ExitCode.ERROR
    assert "invalid database URL" in r.stderr and "s3cr" not in r.stderr


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["run", "--app", "fleet_test_apps.v1", "--heartbeat-interval", "0s"], ExitCode.USAGE,
         "heartbeat interval must be positive"),
        (["run", "--app", "fleet_test_apps.common"], ExitCode.USAGE, "has no fleet_worker.App"),
        (["run", "--app", "fleet_test_apps.v1", "--bogus"], ExitCode.USAGE, "--bogus"),
        (["run", "--app", "fleet_test_apps.v1", "--health-port", "0"], ExitCode.ERROR,
         "cannot connect to the database"),
    ],
)  # fmt: skip
def test_why_a_worker_exits_is_its_termination_message(
    tmp_path: Path, args: list[str], code: int, says: str
) -> None:
    """Kubernetes shows the termination-message file in the pod's status: a crash-looping
    worker must say why there, not only in its log."""
    message = tmp_path / "termination-log"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(APPS_DIR),
        "DATABASE_URL": "postgresql://nobody:secret@127.0.0.1:1/none",
        "FLEET_TERMINATION_LOG": str(message),
    }
    r = subprocess.run([sys.executable, "-m", "fleet_worker.cli", *args], capture_output=True,
                       text=True, env=env, timeout=60, check=False)  # fmt: skip
    assert r.returncode == code
    text = message.read_text()
    assert says in text and f"exit {int(code)}" in text
    assert "secret" not in text
