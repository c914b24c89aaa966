"""Delivery-receipt DAGs for ``dag.test()`` (Airflow 3.1+): the tests record the receipts as
asset events in the real metadata DB while (or before) the DAG runs.

``delivery_after_send`` / ``delivery_after_send_read``: a real send to the sandbox, then
``WhatsAppDeliverySensor(after=...)`` in reschedule mode, until ``delivered`` / ``read``.
``delivery_after_mapped_sends``: the sensor over a mapped send's three results.
``delivery_timeout`` / ``delivery_soft_timeout``: the sensor over one known message id with a
1.5 s timeout, without and with ``soft_fail``.
``delivery_campaign``: a campaign of the ``CAMPAIGN`` recipients, the sensor over it with
``fail_fast=False``, then the report (conf: ``ledger_path``, ``report_path``).
A failing sensor there writes its exception's fields to ``FAMULOR_FAILURE_FILE``.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from typing import Any

from airflow.providers.common.compat.sdk import DAG, task

from famulor_provider.exceptions import FamulorDeliveryFailedError
from famulor_provider.operators.delivery import WhatsAppDeliveryReportOperator
from famulor_provider.operators.whatsapp import SendWhatsAppCampaignOperator, SendWhatsAppTemplateOperator
from famulor_provider.sensors.delivery import WhatsAppDeliverySensor

PHONE = "+4915112345623"
CAMPAIGN = [
    {
        "recipient_phone": f"+49151000000{i:02d}",
        "recipient_name": f"Customer {i}",
        "variables": {"1": f"A-{i}"},
    }
    for i in range(6)
]


class RecordingDeliverySensor(WhatsAppDeliverySensor):
    """The sensor, writing the fields of a ``FamulorDeliveryFailedError`` it raises to
    ``FAMULOR_FAILURE_FILE`` (Airflow 3.1's ``dag.test()`` gives failure callbacks no exception)."""

    def poke(self, context: Any) -> Any:
        try:
            return super().poke(context)
        except FamulorDeliveryFailedError as error:
            names = (
                "whatsapp_message_id",
                "status",
                "error_code",
                "error_description",
                "recipient",
                "failed",
            )
            with open(os.environ["FAMULOR_FAILURE_FILE"], "w") as file:
                json.dump(
                    {
                        "type": type(error).__name__,
                        "message": str(error),
                        **{k: getattr(error, k) for k in names},
                    },
                    file,
                )
            raise


def dag(dag_id: str) -> DAG:
    return DAG(
        dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc), catchup=False
    )


for dag_id, until in (("delivery_after_send", "delivered"), ("delivery_after_send_read", "read")):
    with dag(dag_id):
        send = SendWhatsAppTemplateOperator(
            task_id="send",
            sender_id=12,
            recipient_phone=PHONE,
            template_name="order_update",
            variables={"1": "A-1"},
        )
        RecordingDeliverySensor(
            task_id="wait",
            after=send.output,
            until=until,
            poke_interval=0.5,
            timeout=60,
            retries=2,
        )

with dag("delivery_after_mapped_sends"):
    sends = SendWhatsAppTemplateOperator.partial(
        task_id="send", sender_id=12, template_name="order_update", variables={"1": "A-1"}
    ).expand(recipient_phone=[PHONE, "+4915112345624", "+4915112345625"])
    WhatsAppDeliverySensor(task_id="wait", after=sends.output, poke_interval=0.5, timeout=60)

for dag_id, soft_fail in (("delivery_timeout", False), ("delivery_soft_timeout", True)):
    with dag(dag_id):

        @task
        def sent() -> dict[str, Any]:
            return {"whatsapp_message_id": 7001, "recipient_phone": PHONE}

        WhatsAppDeliverySensor(
            task_id="wait", after=sent(), poke_interval=0.5, timeout=1.5, soft_fail=soft_fail
        )

with dag("delivery_campaign"):
    campaign = SendWhatsAppCampaignOperator(
        task_id="campaign",
        sender_id=12,
        template_name="order_update",
        recipients=CAMPAIGN,
        ledger_path="{{ dag_run.conf['ledger_path'] }}",
    )
    wait = WhatsAppDeliverySensor(
        task_id="wait", campaign=campaign.output, fail_fast=False, poke_interval=0.5, timeout=60
    )
    report = WhatsAppDeliveryReportOperator(
        task_id="report",
        campaign=campaign.output,
        recipients=CAMPAIGN,
        output_path="{{ dag_run.conf['report_path'] }}",
    )
    wait >> report
