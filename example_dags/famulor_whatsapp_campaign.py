"""Send an approved WhatsApp template to a list of recipients in one paced task.

Wait for a ready sender, pick the best one by capacity, then run the campaign: one
``SendWhatsAppCampaignOperator`` task checks and deduplicates every recipient before the first
send, sends at the account's limit (5/s by default) and records each send in a ledger file
before and after its request. ``retries=2`` is safe: a retry (or a clear) reads the ledger and
never sends to a recipient again who was sent, or whose answer was lost, unless told to. The
report task reads that ledger and prints counts, and a few masked examples of what was not sent.

The recipients live in a file, and the run's conf names it::

    {"template_name": "order_update", "language": "en",
     "recipients": "s3://bucket/campaigns/march.csv"}

A CSV (``recipient_phone``, ``recipient_name``, one column per template variable) or JSON Lines
file, read through ``ObjectStoragePath`` (a local path, ``file://``, ``s3://`` ... with
``recipients_conn_id``). A file, not a list in the conf: the scheduler reads a run's conf again
and again for the whole run, so its CPU grows with an inline list (see the README), and a large
list does not fit one argument of ``airflow dags trigger -c``; the file also keeps the phone
numbers out of the run's conf and the task's rendered fields. A small list inline still works
(``"recipients": [{"recipient_phone": "+14155550101", "variables": {"1": "A-1001"}}]``).

The ledger goes under ``$AIRFLOW_HOME/famulor/campaign-ledgers``; with several workers, set
``LEDGER_PATH`` to a folder they all mount, or to ``s3://bucket/prefix`` where each try gets a
fresh disk (Kubernetes, MWAA; needs ``airflow-provider-famulor[amazon]`` and the AWS connection
``aws_default``). Needs a Famulor connection ``famulor_default`` (or the
local sandbox: ``make demo``).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.providers.common.compat.sdk import DAG, task

from famulor_provider.operators.whatsapp import ListWhatsAppSendersOperator, SendWhatsAppCampaignOperator
from famulor_provider.sensors.whatsapp import WhatsAppSenderSensor

LEDGER_PATH = None  # the default folder; with several workers a shared folder or s3://bucket/prefix
# Three recipients that ship with the example; give your own file's path or URI in the conf.
RECIPIENTS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "campaign_recipients.csv")

with DAG(
    dag_id="famulor_whatsapp_campaign",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    render_template_as_native_obj=True,
    params={
        "template_name": "order_update",
        "language": "en",
        "recipients": RECIPIENTS_FILE,  # a path or URI (s3://... with recipients_conn_id)
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
        """Print the campaign's counts from its ledger; fail if anyone was not sent for sure."""
        from famulor_provider.campaign.ledger import ledger_file_path, read_campaign_ledger, summarize
        from famulor_provider.privacy import full_phone_numbers_in_logs, mask_phone

        ledger = ledger_file_path(
            LEDGER_PATH, dag_id=ti.dag_id, run_id=ti.run_id, task_id="send_campaign", map_index=-1
        )
        if not ledger.startswith("s3://") and not os.path.exists(ledger):
            raise RuntimeError(f"No campaign ledger at {ledger}: nothing was sent (see send_campaign)")
        show = str if full_phone_numbers_in_logs() else mask_phone  # phone numbers are personal data
        examples: list[str] = []  # a few of the recipients not sent for sure, not one line each

        def keep(record: dict[str, Any]) -> dict[str, Any]:
            if record["outcome"] in ("refused", "unknown") and len(examples) < 5:
                why = record.get("error_code") or record.get("error")
                examples.append(f"{show(record['recipient_phone'])}: {record['outcome']} ({why})")
            return record

        counts = summarize(keep(record) for record in read_campaign_ledger(ledger))
        print(f"Campaign {counts}; ledger {ledger}")
        not_sent = counts["refused"] + counts["unknown"]
        if not_sent:
            # unknown: it may have been sent; check in Famulor before sending again.
            raise RuntimeError(
                f"{not_sent} recipient(s) not sent for sure ({counts['refused']} refused, "
                f"{counts['unknown']} unknown: they may have been sent), e.g. {'; '.join(examples)}. "
                f"Every one is in {ledger}."
            )
        return {**counts, "ledger": ledger}

    wait_for_sender >> list_senders
    send_campaign >> report()
