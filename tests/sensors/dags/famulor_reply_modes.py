"""One DAG per sensor mode for the reply sensor, run with ``dag.test()`` against the sandbox.

``reply_<mode>``: ``ask`` sends template 1201 of sender 12 to ``params.phone``; ``customer`` makes
the sandbox's customer write ``dag_run.conf["replies"]`` (before the sensor's first poke);
``reply`` waits for YES or NO and ``use_reply`` reads what it pushed; ``timeout`` and
``soft_timeout`` wait one second for a reply that never comes ("NEVER").
``reply_without_after_<mode>``: the sensor names the conversation by sender_id + recipient_phone.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from airflow.providers.common.compat.sdk import DAG, task

from famulor_provider.operators.whatsapp import SendWhatsAppTemplateOperator
from famulor_provider.sensors.whatsapp import WhatsAppReplySensor

PHONE = "+4915112345678"
MODES: dict[str, dict[str, Any]] = {
    "poke": {"mode": "poke", "deferrable": False},
    "reschedule": {"mode": "reschedule", "deferrable": False},
    "deferrable": {"deferrable": True},
}


@task
def customer(**context: Any) -> int:
    """The customer writes each of ``dag_run.conf["replies"]`` through the sandbox's control API."""
    import requests
    from airflow.providers.common.compat.sdk import BaseHook

    url = str(BaseHook.get_connection("famulor_default").host).removesuffix("/api") + "/_sandbox"
    replies = (context["dag_run"].conf or {}).get("replies", [])
    for reply in replies:
        body = {"sender_phone": "+14155551234", "customer_phone": PHONE, **reply}
        requests.post(f"{url}/conversations/receive", json=body, timeout=5).raise_for_status()
    return len(replies)


for name, mode_kwargs in MODES.items():
    with DAG(
        dag_id=f"reply_{name}",
        schedule=None,
        start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
        catchup=False,
    ):
        ask = SendWhatsAppTemplateOperator(
            task_id="ask", sender_id=12, template_id=1201, recipient_phone=PHONE, variables={"1": "A-17"}
        )
        reply = WhatsAppReplySensor(
            task_id="reply",
            after=ask.output,
            choices=["YES", "NO"],
            poke_interval=0.2,
            timeout=30,
            retries=0,
            **mode_kwargs,
        )

        @task
        def use_reply(answer: dict[str, Any]) -> str:
            return str(answer["choice"])

        ask >> customer() >> reply
        use_reply(reply.output)
        for task_id, soft_fail in (("timeout", False), ("soft_timeout", True)):
            reply >> WhatsAppReplySensor(
                task_id=task_id,
                after=ask.output,
                choices=["NEVER"],
                poke_interval=0.2,
                timeout=1,
                soft_fail=soft_fail,
                retries=0,
                **mode_kwargs,
            )

for name in ("poke", "deferrable"):
    with DAG(
        dag_id=f"reply_without_after_{name}",
        schedule=None,
        start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
        catchup=False,
    ):
        WhatsAppReplySensor(
            task_id="reply",
            sender_id=12,
            recipient_phone=PHONE,
            poke_interval=0.2,
            timeout=30,
            retries=0,
            **MODES[name],
        )

with DAG(
    dag_id="reply_unknown_sender",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
):
    WhatsAppReplySensor(
        task_id="reply", sender_id=99, recipient_phone=PHONE, poke_interval=0.2, timeout=30, retries=0
    )
