"""System test DAG: a campaign to the recipients in ``$FAMULOR_SYSTEM_SHARED_DIR/recipients.csv``,
the delivery sensor (30 s at most, soft_fail), the report, and a fallback campaign (template
``welcome``) to the customers whose message failed or was undelivered."""

from __future__ import annotations

import os
from datetime import datetime, timezone

from airflow.sdk import DAG, task

from famulor_provider.operators.delivery import WhatsAppDeliveryReportOperator
from famulor_provider.operators.whatsapp import SendWhatsAppCampaignOperator
from famulor_provider.sensors.delivery import WhatsAppDeliverySensor

SHARED = os.environ.get("FAMULOR_SYSTEM_SHARED_DIR", "/tmp")
RECIPIENTS = os.path.join(SHARED, "recipients.csv")

with DAG(
    dag_id="famulor_delivery_system",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
):
    campaign = SendWhatsAppCampaignOperator(
        task_id="campaign",
        sender_id=12,
        template_name="order_update",
        recipients=RECIPIENTS,
        ledger_path=os.path.join(SHARED, "ledgers"),
        max_sends_per_second=25,
    )
    wait = WhatsAppDeliverySensor(
        task_id="wait", campaign=campaign.output, fail_fast=False, timeout=30, soft_fail=True, poke_interval=2
    )
    report = WhatsAppDeliveryReportOperator(
        task_id="report",
        campaign=campaign.output,
        recipients=RECIPIENTS,
        fallback_statuses=["failed", "undelivered"],
        output_path=os.path.join(SHARED, "fallback.jsonl"),
        trigger_rule="none_failed",
    )

    @task.short_circuit
    def anyone_to_fall_back_on(report: dict) -> bool:
        return report["fallback"] > 0

    fallback = SendWhatsAppCampaignOperator(
        task_id="fallback",
        sender_id=12,
        template_name="welcome",
        language="en",
        recipients=os.path.join(SHARED, "fallback.jsonl"),
        ledger_path=os.path.join(SHARED, "ledgers"),
    )
    wait >> report
    anyone_to_fall_back_on(report.output) >> fallback
