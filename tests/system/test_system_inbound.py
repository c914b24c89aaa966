"""
System test: the ``famulor_whatsapp_inbound`` example DAG on a real Airflow 3.3 deployment.

Scheduler, dag-processor, api-server and triggerer on 127.0.0.1 (SQLite). The sandbox's
customers write messages while the triggerer is SIGKILLed and restarted three times (one kill
right after the trigger read a conversation with new messages). Then, in the metadata database:
every message has at least one ``asset_event`` (none lost), at most one extra per kill (the
same ``dedupe_key``), and every event was consumed by a DAG run (``dagrun_asset_event``).

Slow (about two minutes): runs only with ``FAMULOR_SYSTEM_TEST=1`` (``make test-system``).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deployment import AIRFLOW_VERSION, SYSTEM_TEST, AirflowDeployment, deployed

pytestmark = [
    SYSTEM_TEST,
    pytest.mark.skipif(
        tuple(int(part) for part in AIRFLOW_VERSION.split(".")[:2]) < (3, 3),
        reason="the asset state store and ack-mode shared streams: Airflow 3.3+",
    ),
]

EXAMPLE_DAG = Path(__file__).resolve().parents[2] / "example_dags" / "famulor_whatsapp_inbound.py"
DAG_ID = "famulor_whatsapp_inbound"
SENDER = "+4930901820"
CUSTOMERS = [f"+4915100{n:06d}" for n in range(8)]
MESSAGES = 48
KILLS = 3


@pytest.fixture
def deployment(tmp_path: Path, famulor_sandbox: Any) -> Iterator[AirflowDeployment]:
    conn = json.loads(famulor_sandbox.connection_json())
    conn["extra"]["poll_requests_per_minute"] = 6000  # 1 s polls of a small account
    env = {
        "AIRFLOW_CONN_FAMULOR_DEFAULT": json.dumps(conn),
        "FAMULOR_EXAMPLE_INBOUND_POLL_INTERVAL": "1",
        "FAMULOR_EXAMPLE_INBOUND_SENDER_PHONE": SENDER,
    }
    with deployed(tmp_path, EXAMPLE_DAG, env) as airflow:
        yield airflow


def dedupe_keys(deployment: AirflowDeployment) -> Counter[str]:
    rows = deployment.query("SELECT extra FROM asset_event")
    return Counter(json.loads(extra)["payload"]["dedupe_key"] for (extra,) in rows)


def test_every_message_is_an_event_across_three_triggerer_kills(
    deployment: AirflowDeployment, famulor_sandbox: Any
) -> None:
    # History: written before the watcher started, never an event.
    famulor_sandbox.add_conversation(SENDER, CUSTOMERS[0], history=[{"role": "user", "content": "history"}])
    deployment.wait_for_dag(DAG_ID)
    deployment.wait_until(
        "the watcher's baseline in the asset state store",
        lambda: deployment.query("SELECT key FROM asset_state_store WHERE key LIKE '%.meta'"),
        timeout=180,
    )

    written: list[dict[str, Any]] = []
    done = threading.Event()

    def customers_write() -> None:
        for n in range(MESSAGES):
            receipt = famulor_sandbox.receive(
                SENDER, CUSTOMERS[n % len(CUSTOMERS)], f"message {n}", assistant_reply=f"reply {n}"
            )
            written.append(receipt)
            time.sleep(0.6)
        done.set()

    writer = threading.Thread(target=customers_write)
    writer.start()
    try:
        for kill in range(KILLS):
            time.sleep(6)
            if kill == 1:  # right after the trigger read a conversation with new messages
                reads = sum(1 for r in famulor_sandbox.requests if r.path.startswith("/api/conversations/"))
                deployment.wait_until(
                    "a read of a changed conversation",
                    lambda reads=reads: (
                        sum(1 for r in famulor_sandbox.requests if r.path.startswith("/api/conversations/"))
                        > reads
                    ),
                    timeout=30,
                )
            name = "triggerer" if kill == 0 else f"triggerer-{kill + 1}"
            deployment.kill_worker(name)
            time.sleep(2)  # down for a while: messages keep arriving
            deployment.start(f"triggerer-{kill + 2}", "triggerer", "--skip-serve-logs")
    finally:
        writer.join()
    assert done.is_set() and len(written) == MESSAGES

    expected = {f"{r['conversation_id']}:{r['message_index']}" for r in written}
    deployment.wait_until(
        "an asset event for every message", lambda: expected <= set(dedupe_keys(deployment)), timeout=180
    )
    time.sleep(5)  # a late duplicate would show up now
    counts = dedupe_keys(deployment)
    assert set(counts) == expected, "an event for a message that is not new (history or an assistant reply)"
    assert max(counts.values()) <= 1 + KILLS
    extra = sum(counts.values()) - len(expected)
    print(
        f"system test: {len(expected)} messages, {sum(counts.values())} asset events, {extra} duplicates "
        f"over {KILLS} kills; per message at most {max(counts.values())}"
    )

    # Every event reaches a DAG run (events stored while a run was queued join the next one).
    deployment.wait_until(
        "every event consumed by a successful DAG run",
        lambda: (
            deployment.query(
                "SELECT COUNT(*) FROM asset_event e WHERE NOT EXISTS "
                "(SELECT 1 FROM dagrun_asset_event d JOIN dag_run r ON r.id = d.dag_run_id "
                " WHERE d.event_id = e.id AND r.state = 'success')"
            )
            == [(0,)]
        ),
        timeout=240,
    )
