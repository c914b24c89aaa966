"""A campaign task whose every argument comes from the run's conf, for the campaign operator tests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.providers.common.compat.sdk import DAG

from famulor_provider.operators.whatsapp import SendWhatsAppCampaignOperator

with DAG(
    dag_id="famulor_campaign_cases",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    render_template_as_native_obj=True,
    params={
        "sender_id": 12,
        "template_name": "order_update",
        "recipients": [],
        "ledger_path": "",
        "invalid_recipients": "fail",
        "offline_timeout": 900,
        "resend_unknown": False,
        "check_messaging_limit": True,
        "retries": 0,
    },
) as dag:
    SendWhatsAppCampaignOperator(
        task_id="campaign",
        sender_id="{{ params.sender_id }}",
        template_name="{{ params.template_name }}",
        language="en",
        recipients="{{ params.recipients }}",
        ledger_path="{{ params.ledger_path }}",
        invalid_recipients="{{ params.invalid_recipients }}",
        offline_timeout="{{ params.offline_timeout }}",
        resend_unknown="{{ params.resend_unknown }}",
        check_messaging_limit="{{ params.check_messaging_limit }}",
        retries=1,
        retry_delay=timedelta(seconds=0),
    )
