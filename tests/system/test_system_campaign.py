"""
System test: a campaign whose Celery worker is SIGKILLed mid-send resumes on the other worker.

A real deployment (``deployment.py``): redis-server, the CeleryExecutor and two Celery workers
with one slot each, sharing the campaign ledger folder (``FAMULOR_SYSTEM_SHARED_DIR/ledgers``),
and the sandbox as the Famulor connection with the API's 5 sends/s limit. The
``famulor_campaign_kill`` DAG sends 150 recipients (about 30 s); once the sandbox billed about
40 % of them the test kills the campaign's worker (its whole process tree, SIGKILL). The
scheduler fails the try for its missing heartbeat and the retry runs on the other worker,
resuming from the ledger: every recipient is billed exactly once, except at most the one in
flight at the kill, which the ledger reports as ``unknown`` (then the task fails without a
retry, because sending it again could message someone twice). Every process is stopped by its
id afterwards.

Slow (about 3 minutes): runs only with ``FAMULOR_SYSTEM_TEST=1`` (``make test-system``); on
Airflow 3 only (2.11 refuses SQLite with the CeleryExecutor).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deployment import HEARTBEAT_TIMEOUT, NEEDS_CELERY, SYSTEM_TEST, AirflowDeployment, deployed

from famulor_provider.campaign.ledger import iter_ledger_events, read_campaign_ledger

pytestmark = [SYSTEM_TEST, NEEDS_CELERY]

CAMPAIGN_DAG = Path(__file__).resolve().parent / "dags" / "famulor_campaign_kill.py"
DAG_ID = "famulor_campaign_kill"
TASK_ID = "send_campaign"
RECIPIENTS = 150
KILL_AT = 60  # billed messages (40 %) before the kill
PHONES = {f"+1415{5560000 + i:07d}" for i in range(RECIPIENTS)}  # as the DAG file builds them


@pytest.fixture
def celery_deployment(tmp_path: Path, famulor_sandbox: Any) -> Iterator[AirflowDeployment]:
    env = {**famulor_sandbox.env(), "FAMULOR_CAMPAIGN_RECIPIENTS": str(RECIPIENTS)}
    # No triggerer: the campaign never defers, and the two CPUs of a CI machine are busy enough.
    with deployed(tmp_path, CAMPAIGN_DAG, env, executor="celery", workers=2, triggerer=False) as airflow:
        yield airflow


def ledger_file(deployment: AirflowDeployment) -> Path | None:
    """The campaign's ledger file in the shared folder, once the first try created it."""
    found = sorted((deployment.shared / "ledgers" / DAG_ID).glob(f"*/{TASK_ID}.jsonl"))
    return found[0] if found else None


def tries(deployment: AirflowDeployment) -> list[dict[str, Any]]:
    path = ledger_file(deployment)
    if path is None:
        return []
    return [event for event in iter_ledger_events(path) if event.get("type") == "try"]


def test_a_campaign_whose_worker_is_killed_resumes_on_the_other_worker_without_a_duplicate(
    celery_deployment: AirflowDeployment, famulor_sandbox: Any
) -> None:
    deployment, sandbox = celery_deployment, famulor_sandbox
    started = time.monotonic()
    deployment.wait_for_dag(DAG_ID)
    deployment.wait_until_ready()
    ready = time.monotonic()
    deployment.cli("dags", "trigger", DAG_ID)

    [first] = deployment.wait_until("try 1 to open the ledger", lambda: tries(deployment), timeout=90)
    victim = deployment.worker_of(first["pid"])
    assert victim is not None, (first, deployment.logs())
    survivor = next(name for name in deployment.worker_names if name != victim)
    deployment.wait_until(
        f"the sandbox to bill {KILL_AT} messages", lambda: len(sandbox.ledger) >= KILL_AT, timeout=60
    )
    killed_pids = deployment.kill_worker(victim)
    killed = time.monotonic()
    billed_at_kill = len(sandbox.ledger)
    assert first["pid"] in killed_pids
    assert billed_at_kill < RECIPIENTS, "the campaign ended before the kill: nothing was tested"

    deployment.wait_until(
        "the scheduler to fail try 1 for its missing heartbeat",
        lambda: (deployment.task_instance(DAG_ID, TASK_ID) or {}).get("try_number", 1) >= 2,
        timeout=HEARTBEAT_TIMEOUT + 50,
    )
    noticed = time.monotonic()
    deployment.wait_until("try 2 to open the ledger", lambda: len(tries(deployment)) >= 2, timeout=60)
    resumed = time.monotonic()
    deployment.wait_until(
        "the DAG run to finish",
        lambda: deployment.query(
            "SELECT state FROM dag_run WHERE dag_id = ? AND state IN ('success', 'failed')", DAG_ID
        ),
        timeout=90,
    )
    finished = time.monotonic()

    path = ledger_file(deployment)
    assert path is not None
    records = {record["recipient_phone"]: record for record in read_campaign_ledger(path)}
    outcomes = Counter(record["outcome"] for record in records.values())
    unknown = [phone for phone, record in records.items() if record["outcome"] == "unknown"]
    billed = Counter(entry["recipient_phone"] for entry in sandbox.ledger)
    answered_429 = sum(1 for request in sandbox.requests if request.status == 429)
    # the ledger keeps each send's whatsapp_message_id, the id delivery receipts name
    message_ids = {entry["recipient_phone"]: entry["whatsapp_message_id"] for entry in sandbox.ledger}

    # Nobody billed twice, nobody outside the campaign billed.
    assert max(billed.values()) == 1, [phone for phone, n in billed.items() if n > 1]
    assert set(billed) <= PHONES
    # The ledger covers every recipient: sent, or unknown (at most the one in flight at the kill).
    assert set(records) == PHONES
    assert len(unknown) <= 1, unknown
    assert outcomes["sent"] == RECIPIENTS - len(unknown) and not outcomes["refused"], outcomes
    for phone, record in records.items():
        if record["outcome"] == "sent":
            # More than one attempt only after 429s: refused, so nothing was sent.
            assert billed[phone] == 1 and record["message_id"] == message_ids[phone], record
        else:  # in flight at the kill: billed or not, and never sent again
            assert billed[phone] <= 1 and record["attempts"] == 1, record
    assert set(billed) == PHONES - {phone for phone in unknown if not billed[phone]}

    # Two tries, in two processes on two workers: the killed one and the survivor.
    first_try, second_try = tries(deployment)
    assert (first_try["try_number"], second_try["try_number"]) == (1, 2)
    assert first_try["pid"] != second_try["pid"] and second_try["pid"] not in killed_pids
    assert DAG_ID in deployment.log(survivor)
    assert "without a heartbeat" in deployment.log("scheduler")

    ti = deployment.task_instance(DAG_ID, TASK_ID)
    assert ti is not None
    if unknown:  # not sent again without resend_unknown=True: fails, and without a third try
        assert (ti["state"], ti["try_number"]) == ("failed", 2), (ti, deployment.logs())
        assert deployment.query("SELECT state FROM dag_run WHERE dag_id = ?", DAG_ID) == [("failed",)]
    else:
        assert (ti["state"], ti["try_number"]) == ("success", 2), (ti, deployment.logs())
        assert deployment.query("SELECT state FROM dag_run WHERE dag_id = ?", DAG_ID) == [("success",)]

    in_flight = "none"
    if unknown:
        in_flight = f"{unknown[0]} ({'billed' if billed[unknown[0]] else 'not billed'})"
    print(
        f"\nsystem test (celery campaign): {RECIPIENTS} recipients; try 1 on {victim} (pid "
        f"{first_try['pid']}, host {first_try['hostname']}) killed with SIGKILL at {billed_at_kill} "
        f"billed; try 2 on {survivor} (pid {second_try['pid']}, host {second_try['hostname']}); "
        f"in flight at the kill: {in_flight}; billed {sum(billed.values())}, duplicates 0, "
        f"429 answers {answered_429}; "
        f"task {ti['state']} after try {ti['try_number']}"
        f"\n  deployment ready {ready - started:.0f} s, trigger to kill {killed - ready:.0f} s, "
        f"kill to retry noticed {noticed - killed:.0f} s, to try 2 sending {resumed - killed:.0f} s, "
        f"try 2 to end {finished - resumed:.0f} s, total {finished - started:.0f} s"
    )
