"""Campaign DAGs whose every templated argument comes from the run's conf, for the operator tests.

``famulor_campaign_cases``: one campaign task with ``retries=1``.
``famulor_campaign_timeout``: the same task with a 4 s ``execution_timeout`` (not templatable).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.providers.common.compat.sdk import DAG

from famulor_provider.operators.whatsapp import SendWhatsAppCampaignOperator

PARAMS = {
    "sender_id": 12,
    "template_name": "order_update",
    "language": "en",
    "recipients": [],
    "ledger_path": "",
    "invalid_recipients": "fail",
    "max_sends_per_second": 50,
    "offline_timeout": 900,
    "resend_unknown": False,
    "max_rejected": None,
    "check_messaging_limit": True,
}
EXECUTION_TIMEOUT = {"famulor_campaign_cases": None, "famulor_campaign_timeout": timedelta(seconds=4)}

for dag_id, execution_timeout in EXECUTION_TIMEOUT.items():
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
        catchup=False,
        render_template_as_native_obj=True,
        params=PARAMS,
    ) as dag:
        SendWhatsAppCampaignOperator(
            task_id="campaign",
            sender_id="{{ params.sender_id }}",
            template_name="{{ params.template_name }}",
            language="{{ params.language }}",
            recipients="{{ params.recipients }}",
            ledger_path="{{ params.ledger_path }}",
            invalid_recipients="{{ params.invalid_recipients }}",
            max_sends_per_second="{{ params.max_sends_per_second }}",
            offline_timeout="{{ params.offline_timeout }}",
            resend_unknown="{{ params.resend_unknown }}",
            max_rejected="{{ params.max_rejected }}",
            check_messaging_limit="{{ params.check_messaging_limit }}",
            retries=1,
            retry_delay=timedelta(seconds=0),
            execution_timeout=execution_timeout,
        )
    globals()[dag_id] = dag
