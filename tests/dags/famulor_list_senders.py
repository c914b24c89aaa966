"""ListWhatsAppSendersOperator with every argument templated from the run's conf."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from airflow.providers.common.compat.sdk import DAG, task

from famulor_provider.operators.whatsapp import ListWhatsAppSendersOperator


def conf(key: str, default: Any) -> str:
    return f"{{{{ dag_run.conf.get({key!r}, {default!r}) }}}}"


with DAG(
    dag_id="famulor_list_senders",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
) as dag:
    senders = ListWhatsAppSendersOperator(
        task_id="list_senders",
        famulor_conn_id=conf("conn_id", "famulor_default"),
        status=conf("status", "online"),
        quality_ratings=conf("quality_ratings", None),
        min_messaging_limit=conf("min_messaging_limit", None),
        sender_ids=conf("sender_ids", None),
        phone_numbers=conf("phone_numbers", None),
        order_by=conf("order_by", None),
        if_empty=conf("if_empty", "succeed"),
    )

    @task
    def sender_id_of(sender: dict[str, Any]) -> int:
        return int(sender["id"])

    sender_id_of.expand(sender=senders.output)
