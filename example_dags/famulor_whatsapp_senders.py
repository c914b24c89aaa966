"""List the online WhatsApp senders fit to send, best first, and prepare one message per sender.

Needs a Famulor connection ``famulor_default`` (or the local sandbox: ``make demo``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from airflow.providers.common.compat.sdk import DAG, task

from famulor_provider.operators.whatsapp import ListWhatsAppSendersOperator

with DAG(
    dag_id="famulor_whatsapp_senders",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["famulor", "whatsapp", "example"],
) as dag:
    list_senders = ListWhatsAppSendersOperator(
        task_id="list_senders",
        status="online",
        quality_ratings=["GREEN", "YELLOW"],
        order_by="capacity",
    )

    @task
    def prepare_message(sender: dict[str, Any]) -> dict[str, Any]:
        """The payload a send task would post for this sender (sending is a later step)."""
        return {
            "sender_id": sender["id"],
            "from": sender["phone_number"],
            "template_name": "order_update",
            "daily_capacity": sender["messaging_limit"],  # None: unlimited
        }

    prepare_message.expand(sender=list_senders.output)
