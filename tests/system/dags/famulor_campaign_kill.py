"""
A campaign for killing its worker mid-send (``tests/system/test_system_campaign.py``).

One ``SendWhatsAppCampaignOperator`` task, ``send_campaign``, with two retries one second apart:
``FAMULOR_CAMPAIGN_RECIPIENTS`` recipients (default 150) from sender 12's ``order_update``
template, at the API's 5 sends/s, with the ledger in ``FAMULOR_SYSTEM_SHARED_DIR/ledgers``: the
folder every worker of the deployment shares, as NFS would on several machines.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.common.compat.sdk import DAG

from famulor_provider.operators.whatsapp import SendWhatsAppCampaignOperator

SHARED_DIR = Path(os.environ.get("FAMULOR_SYSTEM_SHARED_DIR", "/tmp/famulor-system-shared"))
RECIPIENTS = [
    {"recipient_phone": f"+1415{5560000 + i:07d}", "variables": {"1": f"K-{i}"}}
    for i in range(int(os.environ.get("FAMULOR_CAMPAIGN_RECIPIENTS", "150")))
]

with DAG(
    dag_id="famulor_campaign_kill",
    start_date=datetime(2024, 1, 1),
    schedule=None,
    catchup=False,
    tags=["system-test"],
):
    SendWhatsAppCampaignOperator(
        task_id="send_campaign",
        sender_id=12,
        template_name="order_update",
        language="en",
        recipients=RECIPIENTS,
        ledger_path=str(SHARED_DIR / "ledgers"),
        retries=2,
        retry_delay=timedelta(seconds=1),
    )
