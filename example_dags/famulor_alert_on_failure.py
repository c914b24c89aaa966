"""Alert people on WhatsApp when a task fails: ``send_whatsapp_notification`` as a callback.

``fail_on_purpose`` raises; its ``on_failure_callback`` sends the approved template to every
recipient once, with variables rendered from the failed task's context. ``check_alert`` runs
anyway (``trigger_rule="all_done"``) and asks Famulor whether each recipient now has a
conversation with the sender, so the run succeeds when the alert went out (on a fresh sandbox
that is proof; on a real account a recipient messaged before passes too) and
``airflow dags test`` exits 0.

Any DAG takes the notifier the same way: ``on_failure_callback``, ``on_success_callback`` or
``on_retry_callback`` of a task (or of every task, through ``default_args``) or of the DAG.

Needs a Famulor connection ``famulor_default`` (or the local sandbox: ``make demo``).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.providers.common.compat.sdk import DAG, task

from famulor_provider.notifications.whatsapp import send_whatsapp_notification

alert = send_whatsapp_notification(
    sender_id="{{ params.sender_id }}",
    recipients="{{ params.recipients }}",  # renders the list's text; a comma-separated text works too
    template_name="{{ params.template_name }}",
    language="{{ params.language }}",
    variables={"1": "{{ dag.dag_id }}.{{ ti.task_id }}"},
)

with DAG(
    dag_id="famulor_alert_on_failure",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    params={
        "sender_id": 12,
        "recipients": ["+14155550101", "+14155550102"],
        "template_name": "order_update",
        "language": "en",
    },
    tags=["famulor", "whatsapp", "example"],
) as dag:

    @task(retries=0, on_failure_callback=alert)
    def fail_on_purpose() -> None:
        raise RuntimeError("Failing on purpose, so that the WhatsApp alert goes out")

    # A retry covers Airflow 2, whose scheduler may start this task while the callback still runs.
    @task(trigger_rule="all_done", retries=1, retry_delay=timedelta(seconds=15))
    def check_alert(params: dict[str, Any] | None = None) -> list[str]:
        """Fail unless every recipient has a conversation with the sender."""
        from famulor_provider.hooks.famulor import FamulorHook
        from famulor_provider.validation import as_list, normalize_phone

        params = params or {}
        hook = FamulorHook()
        phones = [normalize_phone(str(p)) for p in as_list(params["recipients"], "recipients") or []]
        missing = [
            p for p in phones if not hook.get_whatsapp_session_status(params["sender_id"], p).has_conversation
        ]
        if missing:
            raise RuntimeError(f"No WhatsApp conversation with {missing}: see fail_on_purpose's log")
        print(f"Alert delivered to {phones}")
        return phones

    fail_on_purpose() >> check_alert()
