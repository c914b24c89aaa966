"""Send an approved WhatsApp template to a list of recipients in one paced task.

Wait for a ready sender, pick the best one by capacity, then run the campaign: one
``SendWhatsAppCampaignOperator`` task checks and deduplicates every recipient before the first
send, sends at the account's limit (5/s by default) and records each send in a ledger file
before and after its request. ``retries=2`` is safe: a retry (or a clear) reads the ledger and
never sends to a recipient again who was sent, or whose answer was lost, unless told to. The
report task reads that ledger and prints each recipient's outcome.

Trigger with a conf such as::

    {"template_name": "order_update", "language": "en",
     "recipients": [{"recipient_phone": "+14155550101", "recipient_name": "Ada",
                     "variables": {"1": "A-1001"}}]}

``recipients`` may also be the path or URI of a CSV or JSON Lines file (``/data/list.csv``,
``s3://bucket/list.jsonl`` with ``recipients_conn_id``). The ledger goes under
``$AIRFLOW_HOME/famulor/campaign-ledgers``; with several workers, set ``ledger_path`` to a folder
they all mount. Needs a Famulor connection ``famulor_default`` (or the local sandbox:
``make demo``).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.providers.common.compat.sdk import DAG, task

from famulor_provider.operators.whatsapp import ListWhatsAppSendersOperator, SendWhatsAppCampaignOperator
from famulor_provider.sensors.whatsapp import WhatsAppSenderSensor

LEDGER_PATH = None  # the default folder; a shared folder (path or file:// URI) with several workers

with DAG(
    dag_id="famulor_whatsapp_campaign",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    render_template_as_native_obj=True,
    params={
        "template_name": "order_update",
        "language": "en",
        "recipients": [
            {"recipient_phone": "+14155550101", "recipient_name": "Ada", "variables": {"1": "A-1001"}},
            {"recipient_phone": "+14155550102", "recipient_name": "Grace", "variables": {"1": "A-1002"}},
            {"recipient_phone": "+442079460103", "recipient_name": "Alan", "variables": {"1": "A-1003"}},
        ],
    },
    tags=["famulor", "whatsapp", "example"],
) as dag:
    wait_for_sender = WhatsAppSenderSensor(
        task_id="wait_for_sender",
        quality_ratings=["GREEN", "YELLOW"],
        poke_interval=300,  # Famulor syncs sender status with Meta every 5 minutes
        timeout=6 * 3600,
    )

    list_senders = ListWhatsAppSendersOperator(
        task_id="list_senders",
        quality_ratings=["GREEN", "YELLOW"],
        order_by="capacity",
        if_empty="fail",
    )

    @task
    def pick_sender(senders: list[dict[str, Any]]) -> int:
        """The best sender: the list is ordered by capacity, best first."""
        best = senders[0]
        print(f"Sending from sender {best['id']} ({best['phone_number']}, {best['quality_rating']})")
        return int(best["id"])

    send_campaign = SendWhatsAppCampaignOperator(
        task_id="send_campaign",
        sender_id=pick_sender(list_senders.output),
        template_name="{{ params.template_name }}",
        language="{{ params.language }}",
        recipients="{{ params.recipients }}",
        ledger_path=LEDGER_PATH,
        retries=2,
        retry_delay=timedelta(minutes=1),
    )

    @task(trigger_rule="all_done")
    def report(ti: Any = None) -> dict[str, Any]:
        """Print each recipient's outcome from the campaign's ledger; fail if any was not sent."""
        from famulor_provider.campaign.ledger import ledger_file_path, read_campaign_ledger

        ledger = ledger_file_path(
            LEDGER_PATH, dag_id=ti.dag_id, run_id=ti.run_id, task_id="send_campaign", map_index=-1
        )
        if not os.path.exists(ledger):
            raise RuntimeError(f"No campaign ledger at {ledger}: nothing was sent (see send_campaign)")
        outcomes: dict[str, list[str]] = {"sent": [], "refused": [], "unknown": []}
        sent: dict[str, Any] = {}
        for record in read_campaign_ledger(ledger):
            phone, outcome = record["recipient_phone"], record["outcome"]
            outcomes[outcome].append(phone)
            if outcome == "sent":
                sent[phone] = record["message_id"]
                print(f"{phone}: sent, message {record['message_id']} ({record['attempts']} attempt(s))")
            else:  # unknown: it may have been sent; check in Famulor before sending again
                print(f"{phone}: {outcome} ({record.get('error_code') or record.get('error')})")
        print(f"Ledger: {ledger}")
        not_sent = outcomes["refused"] + outcomes["unknown"]
        if not_sent:
            raise RuntimeError(
                f"{len(not_sent)} recipient(s) not sent for sure: {outcomes['refused']} refused, "
                f"{outcomes['unknown']} unknown (may have been sent). See {ledger}."
            )
        return {"sent": sent, "ledger": ledger}

    wait_for_sender >> list_senders
    send_campaign >> report()
