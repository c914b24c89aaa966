"""Connections stored in the metadata DB, encrypted with the Fernet key, as deployments keep them.

Airflow 2.11.2 with cryptography 51 could not read any password once a Fernet key was set (its
``MultiFernet`` took no new attributes): a suite without a key never saw it. These tests fail
wherever a password stored by Airflow cannot be read back by a task.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from famulor_provider.testing import SANDBOX_API_KEY

if TYPE_CHECKING:
    from famulor_provider.testing import FamulorSandbox

DAG_FILE = Path(__file__).parent / "dags" / "famulor_list_senders.py"
CONN_ID = "famulor_in_db"


def test_the_session_runs_with_a_fernet_key() -> None:
    from airflow.configuration import conf
    from cryptography.fernet import Fernet

    key = conf.get("core", "fernet_key")
    assert Fernet(key.encode()).decrypt(Fernet(key.encode()).encrypt(b"x")) == b"x"


def test_a_task_reads_a_password_encrypted_in_the_metadata_db(
    run_dag: Any, famulor_sandbox: FamulorSandbox, monkeypatch: Any
) -> None:
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    monkeypatch.delenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", raising=False)  # the DB's, nothing else
    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == CONN_ID).delete()
        session.add(
            Connection(
                conn_id=CONN_ID, conn_type="famulor", host=famulor_sandbox.base_url, password=SANDBOX_API_KEY
            )
        )
    try:
        with create_session() as session:
            stored = session.query(Connection).filter(Connection.conn_id == CONN_ID).one()
            assert stored.is_encrypted
            raw = (
                session.execute(Connection.__table__.select().where(Connection.conn_id == CONN_ID))
                .one()
                ._mapping["password"]
            )
            assert SANDBOX_API_KEY not in raw  # encrypted at rest
            assert stored.password == SANDBOX_API_KEY

        result = run_dag(DAG_FILE, "famulor_list_senders", conf={"conn_id": CONN_ID})
        assert result.ti("list_senders").state == "success"
        assert [s["id"] for s in result.xcom("list_senders")] == [12, 15, 21, 27]
        # the sandbox answers 401 to any other key: the task sent the decrypted one
        assert [r.status for r in famulor_sandbox.requests] == [200]
    finally:
        with create_session() as session:
            session.query(Connection).filter(Connection.conn_id == CONN_ID).delete()
