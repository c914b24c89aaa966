"""A reminder that falls back for the customers it did not reach (Airflow 3.1+).

The campaign sends the reminder template; ``WhatsAppDeliverySensor`` waits (in reschedule mode:
no worker slot between pokes) until every message is delivered or failed, from Famulor's
delivery receipts, which the provider's webhook receiver on the api-server records as events of
``famulor.famulor_default.message_status``. Whatever has not been delivered when its timeout is
up stays undelivered (``soft_fail``: the sensor is skipped, the DAG goes on). The report joins the
campaign's ledger with the receipts, counts the statuses and writes the customers whose message
failed, was never delivered or has no receipt as a recipients file; the fallback campaign sends
them another template (or use ``WhatsAppNotifier``, an SMS or a call task on the same file).

Needs the receiver: the Famulor sender's read-receipt URL set to
``https://<airflow>/famulor/webhooks/famulor_default/message-status`` and its signing secret in
the connection's extra ``webhook_signing_secrets`` (see the README). ``make demo`` runs it against
the sandbox, which posts the receipts to an api-server on 127.0.0.1; one customer's message fails
there (131049) and one is never delivered.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_1_PLUS

RECIPIENTS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "reminder_recipients.csv")
# make demo waits seconds, not the hours a real reminder gives its customers.
DELIVERY_TIMEOUT = float(os.environ.get("FAMULOR_EXAMPLE_DELIVERY_TIMEOUT", 4 * 3600))
POKE_INTERVAL = float(os.environ.get("FAMULOR_EXAMPLE_POKE_INTERVAL", 300))

if AIRFLOW_V_3_1_PLUS:  # Airflow 2.11: no webhook receiver, so no DAG here (the file still parses)
    from airflow.sdk import DAG, task

    from famulor_provider.operators.delivery import WhatsAppDeliveryReportOperator
    from famulor_provider.operators.whatsapp import SendWhatsAppCampaignOperator
    from famulor_provider.sensors.delivery import WhatsAppDeliverySensor

    with DAG(
        dag_id="famulor_whatsapp_delivery_fallback",
        schedule=None,
        start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
        catchup=False,
        tags=["famulor", "whatsapp", "webhooks"],
    ):
        reminder = SendWhatsAppCampaignOperator(
            task_id="send_reminder",
            sender_id=12,
            template_name="order_update",
            recipients=RECIPIENTS_FILE,
            retries=2,
        )
        delivered = WhatsAppDeliverySensor(
            task_id="wait_for_delivery",
            campaign=reminder.output,
            until="delivered",
            fail_fast=False,  # wait for everyone; the failed ones get the fallback
            timeout=DELIVERY_TIMEOUT,
            soft_fail=True,  # not delivered in time: go on to the fallback
            poke_interval=POKE_INTERVAL,
        )
        report = WhatsAppDeliveryReportOperator(
            task_id="delivery_report",
            campaign=reminder.output,
            # Phone numbers only: "welcome" takes no variables. With recipients=RECIPIENTS_FILE the
            # names and variables carry over, for a fallback template with the same variables.
            trigger_rule="none_failed",  # also after the sensor's soft timeout
        )

        @task.short_circuit
        def anyone_to_fall_back_on(report: dict) -> bool:
            return report["fallback"] > 0

        fallback = SendWhatsAppCampaignOperator(
            task_id="send_fallback",
            sender_id=12,
            template_name="welcome",
            language="en",
            recipients="{{ ti.xcom_pull(task_ids='delivery_report')['fallback_path'] }}",
            retries=2,
            retry_delay=timedelta(minutes=1),
        )
        delivered >> report
        anyone_to_fall_back_on(report.output) >> fallback
