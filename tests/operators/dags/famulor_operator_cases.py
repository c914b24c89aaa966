"""Operator DAGs for end-to-end runs with ``dag.test()`` against the sandbox.

``famulor_templated_sends``: every templated argument of ``ListWhatsAppTemplatesOperator``,
``SendWhatsAppTemplateOperator`` and ``SendWhatsAppFreeformOperator`` comes from ``params`` or
``ds`` (rendered as text: no ``render_template_as_native_obj``).
``famulor_variables_as_python_text``: ``variables="{{ params.vars }}"``, which renders a dict's
Python text (``{'1': 'A-1234'}``), not JSON.
``famulor_list_senders_no_xcom``: ``ListWhatsAppSendersOperator`` with ``do_xcom_push=False``.
``famulor_send_timeout`` / ``famulor_list_timeout``: one send / one listing with a 2 s
``execution_timeout`` and ``retries=1``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.providers.common.compat.sdk import DAG

from famulor_provider.operators.whatsapp import (
    ListWhatsAppSendersOperator,
    ListWhatsAppTemplatesOperator,
    SendWhatsAppFreeformOperator,
    SendWhatsAppTemplateOperator,
)


def dag(dag_id: str, **kwargs: Any) -> DAG:
    return DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
        catchup=False,
        **kwargs,
    )


TEMPLATE_PHONE = "+4915112345678"
FREEFORM_PHONE = "+4915112345679"
FALLBACK_PHONE = "+4915112345670"
TIMEOUT_PHONE = "+4915112345671"
PARAMS = {
    "conn_id": "famulor_default",
    "sender_id": "12",
    "template_phone": "+49 151 1234 5678",
    "freeform_phone": FREEFORM_PHONE,
    "fallback_phone": FALLBACK_PHONE,
    "template_id": "",
    "template_name": "order_update",
    "language": "EN",
    "vars": {"1": "A-1234"},
    "recipient_name": "Ann",
    "list_status": "all",
    "list_names": ["welcome", "spring_sale"],
    "list_language": "en",
    "fallback_id": 1201,
}

with dag("famulor_templated_sends", params=PARAMS):
    conn_id = "{{ params.conn_id }}"
    ListWhatsAppTemplatesOperator(
        task_id="list_templates",
        sender_id="{{ params.sender_id }}",
        status="{{ params.list_status }}",
        names="{{ params.list_names }}",
        language="{{ params.list_language }}",
        famulor_conn_id=conn_id,
    )
    SendWhatsAppTemplateOperator(
        task_id="send_template",
        sender_id="{{ params.sender_id }}",
        recipient_phone="{{ params.template_phone }}",
        template_id="{{ params.template_id }}",  # "" next to a name: not given
        template_name="{{ params.template_name }}",
        language="{{ params.language }}",
        variables="{{ params.vars | tojson }}",
        recipient_name="{{ params.recipient_name }} {{ ds }}",
        famulor_conn_id=conn_id,
    )
    for task_id, phone in (("send_freeform", "freeform_phone"), ("send_fallback", "fallback_phone")):
        SendWhatsAppFreeformOperator(
            task_id=task_id,
            sender_id="{{ params.sender_id }}",
            recipient_phone=f"{{{{ params.{phone} }}}}",
            message="Order {{ params.vars['1'] }} ships on {{ ds }}.",
            fallback_template_id="{{ params.fallback_id }}",
            fallback_variables="{{ params.vars | tojson }}",
            famulor_conn_id=conn_id,
        )


with dag("famulor_variables_as_python_text", params={"vars": {"1": "A-1234"}}):
    SendWhatsAppTemplateOperator(
        task_id="send_template",
        sender_id=12,
        recipient_phone=TEMPLATE_PHONE,
        template_id=1201,
        variables="{{ params.vars }}",
    )

with dag("famulor_list_senders_no_xcom", params={"status": "online"}):
    ListWhatsAppSendersOperator(task_id="list_senders", status="{{ params.status }}", do_xcom_push=False)

TIMEOUT = {"execution_timeout": timedelta(seconds=2), "retries": 1, "retry_delay": timedelta(0)}

with dag("famulor_send_timeout"):
    SendWhatsAppTemplateOperator(
        task_id="send_template", sender_id=12, recipient_phone=TIMEOUT_PHONE, template_id=1201, **TIMEOUT
    )

with dag("famulor_list_timeout"):
    ListWhatsAppSendersOperator(task_id="list_senders", **TIMEOUT)
