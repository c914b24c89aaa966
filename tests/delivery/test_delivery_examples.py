"""The two webhook example DAGs with ``dag.test()``: ``famulor_whatsapp_delivery_fallback`` against
the sandbox with its receipts committed as asset events while it runs, and
``famulor_conversation_ended`` on a recorded ended conversation (``make demo`` runs both with the
real receiver)."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from airflow_harness import EXAMPLE_DAGS, airflow_version
from delivery_receipts import receipt, record

from famulor_provider.webhooks.assets import CONVERSATION_ENDED

pytestmark = pytest.mark.skipif(
    airflow_version().startswith("2."), reason="delivery receipts need Airflow 3.1+ (a FastAPI plugin)"
)

OUTCOMES = {
    "+14155550111": "read",
    "+14155550112": "delivered",
    "+14155550113": "failed",
    "+14155550114": "sent",
}
WELCOME = 12 * 100 + 2


def test_the_reminder_falls_back_on_the_failed_and_the_undelivered(
    run_dag: Any, famulor_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from famulor_provider.campaign.ledger import read_campaign_ledger

    monkeypatch.setenv("FAMULOR_EXAMPLE_DELIVERY_TIMEOUT", "4")
    monkeypatch.setenv("FAMULOR_EXAMPLE_POKE_INTERVAL", "0.5")
    ledgers = (
        Path(os.environ["AIRFLOW_HOME"])
        / "famulor"
        / "campaign-ledgers"
        / "famulor_whatsapp_delivery_fallback"
    )
    before = set(ledgers.rglob("send_reminder.jsonl"))
    errors: list[BaseException] = []

    def receipts() -> None:
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                new = [p for p in ledgers.rglob("send_reminder.jsonl") if p not in before]
                records = list(read_campaign_ledger(new[0])) if new else []
                if sum(r["outcome"] == "sent" for r in records) == 4:
                    break
                time.sleep(0.1)
            for r in records:
                final = OUTCOMES[r["recipient_phone"]]
                steps = {"read": ["sent", "delivered", "read"], "delivered": ["sent", "delivered"]}
                for status in steps.get(final, ["sent", final]):
                    code = 131049 if status == "failed" else None
                    record([receipt(r["message_id"], status, r["recipient_phone"], error_code=code)])
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=receipts, daemon=True)
    thread.start()
    result = run_dag(
        EXAMPLE_DAGS / "famulor_whatsapp_delivery_fallback.py", "famulor_whatsapp_delivery_fallback"
    )
    thread.join(30)

    assert not errors, errors
    assert result.states == {
        "send_reminder": "success",
        "wait_for_delivery": "skipped",  # +14155550114 never got past "sent"
        "delivery_report": "success",
        "anyone_to_fall_back_on": "success",
        "send_fallback": "success",
    }
    report = result.xcom("delivery_report")
    assert report["statuses"] == {
        "sent": 1,
        "delivered": 1,
        "read": 1,
        "failed": 1,
        "undelivered": 0,
        "no_receipt": 0,
    }
    assert report["error_codes"] == {"131049": 1}
    fallback = [row["recipient_phone"] for row in famulor_sandbox.ledger if row["template_id"] == WELCOME]
    assert Counter(fallback) == {"+14155550113": 1, "+14155550114": 1}


def test_ended_conversations_print_their_extracted_variables_without_personal_data(
    run_dag: Any, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    payload = {
        "id": 9,
        "conversation_id": "5ba057b5-3871-4716-beeb-ac3b88eadf51",
        "assistant_id": "a1",
        "type": "whatsapp",
        "message_count": 6,
        "status": "ended",
        "extracted_variables": {"order": "A-2001", "delivery_day": "Tuesday"},
        "input_variables": {},
        "transcript": [{"role": "user", "content": "Tuesday please", "timestamp": "", "timestamp_unix": 0}],
        "customer_phone": "+14155550111",
        "customer_name": "Ada",
    }
    record([payload], kind=CONVERSATION_ENDED)

    with caplog.at_level("INFO"):
        result = run_dag(EXAMPLE_DAGS / "famulor_conversation_ended.py", "famulor_conversation_ended")

    assert result.states == {"extracted_variables": "success"}
    assert result.xcom("extracted_variables") == [
        {"conversation_id": payload["conversation_id"], "extracted_variables": payload["extracted_variables"]}
    ]
    logged = capfd.readouterr()
    info = [r.getMessage() for r in caplog.records if r.levelno >= 20]
    text = "\n".join([*info, logged.out, logged.err])
    assert "ended; extracted: delivery_day, order" in text
    for personal in ("+14155550111", "Ada", "Tuesday please", "A-2001"):
        assert personal not in text
