"""DAGs whose callbacks are the WhatsApp notifier, for tests/notifications against the sandbox.

The recipients come from the environment (``FAMULOR_TEST_RECIPIENTS``, a JSON list) so that a
test picks them; the sandbox's seed sender 12 has the approved template ``order_update`` (en).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

from airflow.providers.common.compat.sdk import DAG, task

from famulor_provider.notifications.whatsapp import send_whatsapp_notification

RECIPIENTS = os.environ.get("FAMULOR_TEST_RECIPIENTS", '["+14155550101"]')
START = datetime(2026, 1, 1, tzinfo=timezone.utc)

# One notifier shared by two tasks: each callback must render its own task's values.
task_alert = send_whatsapp_notification(
    sender_id=12,
    recipients=RECIPIENTS,
    template_name="order_update",
    language="en",
    variables={"1": "{{ dag.dag_id }}/{{ ti.task_id }}"},
)

with DAG(
    dag_id="notifier_task_callbacks",
    schedule=None,
    start_date=START,
    catchup=False,
    default_args={"retries": 0, "on_failure_callback": task_alert},
):

    @task
    def fail_first() -> None:
        raise RuntimeError("failing on purpose")

    @task
    def fail_second() -> None:
        raise RuntimeError("failing on purpose")

    # Ids and variables as text, the way templates render them.
    @task(
        on_success_callback=send_whatsapp_notification(
            sender_id="12",
            recipients="+14155550109",
            template_id="1201",
            variables='{"1": "{{ ti.task_id }} ok"}',
        )
    )
    def succeed() -> str:
        return "ok"

    fail_first()
    fail_second()
    succeed()


with DAG(
    dag_id="notifier_dag_callbacks",
    schedule=None,
    start_date=START,
    catchup=False,
    on_failure_callback=send_whatsapp_notification(
        sender_id=12,
        recipients=RECIPIENTS,
        template_id=1201,
        variables={"1": "{{ dag.dag_id }} failed"},
    ),
):

    @task(retries=0)
    def fail() -> None:
        raise RuntimeError("failing on purpose")

    fail()


# Twenty tasks that fail together, every one with the same task-level alert: once per DAG run.
# The claims live in FAMULOR_TEST_CLAIMS (a test's temporary folder).
with DAG(
    dag_id="notifier_once_per_dag_run",
    schedule=None,
    start_date=START,
    catchup=False,
    default_args={
        "retries": 0,
        "on_failure_callback": send_whatsapp_notification(
            sender_id=12,
            recipients=RECIPIENTS,
            template_id=1201,
            variables={"1": "{{ ti.task_id }} failed in {{ run_id }}"},
            once_per_dag_run=True,
            claims_folder=os.environ.get("FAMULOR_TEST_CLAIMS", ""),
        ),
    },
):

    @task
    def fail() -> None:
        raise RuntimeError("failing on purpose")

    for n in range(20):
        fail.override(task_id=f"fail_{n:02d}")()


# The same twenty failures with the alert as the DAG's own callback: once per run by construction.
with DAG(
    dag_id="notifier_dag_callback_of_many",
    schedule=None,
    start_date=START,
    catchup=False,
    default_args={"retries": 0},
    on_failure_callback=send_whatsapp_notification(
        sender_id=12,
        recipients=RECIPIENTS,
        template_id=1201,
        variables={"1": "{{ run_id }} failed"},
    ),
):

    @task
    def fail_too() -> None:
        raise RuntimeError("failing on purpose")

    for n in range(20):
        fail_too.override(task_id=f"fail_{n:02d}")()
