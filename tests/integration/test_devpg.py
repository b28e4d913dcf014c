"""The embedded PostgreSQL launcher's fallback for a venv the service user cannot read
(a checkout under /root): the binaries are copied, with their shared libraries, to a
world-readable cache and must still start."""

from __future__ import annotations

import os

import psycopg
import pytest

import workerfleet_dev.postgres as devpg


@pytest.mark.skipif(
    os.geteuid() != 0, reason="only root runs PostgreSQL as another user, which needs the copy"
)
def test_copied_binaries_start_when_site_packages_is_private(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(devpg, "_traversable_by_others", lambda path: False)
    with devpg.LocalPostgres() as pg:
        assert str(pg.bin).startswith("/var/cache/workerfleet/")
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("select 41 + 1").fetchone() == (42,)
