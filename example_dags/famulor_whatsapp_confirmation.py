"""Ask a customer to confirm by WhatsApp, wait in the triggerer for YES or NO, branch on the answer.

The template asks the question ("Reply YES to confirm your appointment"); the deferrable reply
sensor counts only customer messages written after that send (also one written before the
sensor's first poll), ignores case and the punctuation, formatting and emoji around the answer
(" yes! ", "*Yes* 👍" are YES), and waits past other replies. ``decide`` follows the answer:
``confirmed`` or ``declined`` runs, the other is skipped; no answer in 24 hours fails the
sensor (``soft_fail=True`` would skip).

Needs a Famulor connection ``famulor_default`` and an approved template that asks the question
(``params.template_name``). Against the local sandbox, whose ``order_update`` template stands in
for it, a customer who answers 3 s after each send: ``python -m famulor_provider.testing serve
--customer-reply YES --customer-reply-after 3`` (``make demo`` runs it that way).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.providers.common.compat.sdk import DAG, task

from famulor_provider.operators.whatsapp import SendWhatsAppTemplateOperator
from famulor_provider.sensors.whatsapp import WhatsAppReplySensor

# A minute between polls (shared by every waiting sensor of the connection in the triggerer);
# tests and demos against the sandbox poll faster through this variable.
POKE_INTERVAL = float(os.environ.get("FAMULOR_EXAMPLE_POKE_INTERVAL", "60"))

with DAG(
    dag_id="famulor_whatsapp_confirmation",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    params={
        "sender_id": 12,
        "recipient_phone": "+4915112345678",
        "template_name": "order_update",  # your approved "Reply YES or NO" template
        "language": "en",
        "variables": {"1": "A-17"},
    },
    tags=["famulor", "whatsapp", "example"],
) as dag:
    ask = SendWhatsAppTemplateOperator(
        task_id="ask",
        sender_id="{{ params.sender_id }}",
        recipient_phone="{{ params.recipient_phone }}",
        template_name="{{ params.template_name }}",
        language="{{ params.language }}",
        variables="{{ params.variables | tojson }}",
    )

    answer = WhatsAppReplySensor(
        task_id="answer",
        after=ask.output,
        choices=["YES", "NO"],
        deferrable=True,
        poke_interval=POKE_INTERVAL,
        timeout=timedelta(hours=24),
    )

    @task.branch
    def decide(reply: dict[str, Any]) -> str:
        """``confirmed`` for YES, ``declined`` for NO."""
        return "confirmed" if reply["choice"] == "YES" else "declined"

    @task
    def confirmed(reply: dict[str, Any]) -> str:
        return f"confirmed by the customer ({reply['text']!r})"

    @task
    def declined(reply: dict[str, Any]) -> str:
        return f"declined by the customer ({reply['text']!r}): offer another slot"

    decide(answer.output) >> [confirmed(answer.output), declined(answer.output)]
