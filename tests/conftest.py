"""
Session set-up for tests that run real Airflow.

Airflow reads ``AIRFLOW_HOME`` and its DB URL once, at import. So this conftest, loaded before any
test module, gives the session its own temporary home (removed at the end) with a SQLite DB copied
from a cache of migrated DBs keyed by Airflow version (``.airflow/test-db/``); a version not in
the cache yet is migrated once, in the ``airflow_db`` session fixture, and added to it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.fernet import Fernet

if TYPE_CHECKING:
    from airflow_harness import DagRunResult

if "airflow" in sys.modules:
    raise pytest.UsageError(
        "Airflow was imported before tests/conftest.py could set AIRFLOW_HOME; "
        "a pytest plugin must import Airflow lazily, inside its fixtures."
    )

REPO_ROOT = Path(__file__).resolve().parents[1]
DB_CACHE = REPO_ROOT / ".airflow" / "test-db" / f"airflow-{importlib.metadata.version('apache-airflow')}.db"
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="famulor-airflow-"))

os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "example_dags"),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(AIRFLOW_HOME / "logs"),
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
    }
)
SEEDED = DB_CACHE.exists()
if SEEDED:
    shutil.copyfile(DB_CACHE, AIRFLOW_HOME / "airflow.db")

# Importable as `airflow_harness` from any test module, with or without packages under tests/.
sys.path.insert(0, str(Path(__file__).parent))


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def airflow_db() -> Path:
    """The session's migrated SQLite metadata DB (autouse: any test may touch the DB)."""
    import airflow_harness

    if not SEEDED:
        airflow_harness.migrate_db(cache=DB_CACHE)
    airflow_harness.speed_up_in_process_runs()
    return AIRFLOW_HOME / "airflow.db"


@pytest.fixture
def run_dag(airflow_db: Path) -> Callable[..., DagRunResult]:
    """``run_dag(dag_file, dag_id, *, conf=None, env=None, timeout=300) -> DagRunResult``.

    See :func:`airflow_harness.run_dag`.
    """
    import airflow_harness

    return airflow_harness.run_dag


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The sync hook records its sleeps (retry waits, pacing) here instead of sleeping."""
    from famulor_provider.hooks.famulor import FamulorHook

    slept: list[float] = []
    monkeypatch.setattr(FamulorHook, "sleep", staticmethod(slept.append))
    return slept


@pytest.fixture
def async_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The async hook (the trigger's) records its retry waits here instead of sleeping."""
    from famulor_provider.hooks.famulor import FamulorHook

    slept: list[float] = []

    async def no_wait(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(FamulorHook, "async_sleep", staticmethod(no_wait))
    return slept


@pytest.fixture
def wrong_key(famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox's ``famulor_default`` connection with a key the sandbox refuses (401)."""
    from famulor_fixtures import set_sandbox_conn

    set_sandbox_conn(monkeypatch, famulor_sandbox, password="not-the-key")


@pytest.fixture
def airflow_conn(monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """
    Set a connection for this test only, as an ``AIRFLOW_CONN_<ID>`` env var in JSON form.

    ``airflow_conn("famulor_default", conn_type="famulor", host="http://127.0.0.1:8080", password="k")``
    """

    def set_connection(conn_id: str, **fields: Any) -> str:
        value = json.dumps(fields)
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", value)
        return value

    return set_connection
