"""Send an approved WhatsApp template to a few recipients, one mapped task per recipient.

Wait for a ready sender, pick the best one by capacity, resolve the template's name to its id
once, then send. Each recipient is its own task instance, so Airflow's task states record who
was messaged. ``retries=2`` is safe: a send is retried only when nothing can have been sent
(429, sender offline, no connection); a lost answer fails its task without retry ("delivery
unknown"), so nobody gets a message twice.

This pattern fits a few dozen recipients. Each one costs a task instance (about 0.45 CPU-seconds
of Airflow, plus database rows and logs), tasks in separate processes are not paced against one
another (parallelism buys answers 429, not speed), and a mapped task has at most
``[core] max_map_length`` (default 1,024) instances: the ``recipients`` task checks the list
against it (read at run time) and fails naming the limit, before any send. For larger lists use
``SendWhatsAppCampaignOperator`` (``famulor_whatsapp_campaign``): one task, paced at the
account's limit, with a ledger.

Trigger with a conf such as::

    {"template_name": "order_update", "language": "en",
     "recipients": [{"recipient_phone": "+14155550101", "recipient_name": "Ada",
                     "variables": {"1": "A-1001"}}]}

Needs a Famulor connection ``famulor_default`` (or the local sandbox: ``make demo``).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.providers.common.compat.sdk import DAG, task

from famulor_provider.operators.whatsapp import ListWhatsAppSendersOperator, SendWhatsAppTemplateOperator
from famulor_provider.sensors.whatsapp import WhatsAppSenderSensor
from famulor_provider.validation import normalize_phone

RECIPIENT_KEYS = ("recipient_phone", "recipient_name", "variables")
REPORT_EXAMPLES = 5  # the report names a few recipients without a message id, not all of them


def check_map_length(count: int) -> None:
    """Fail where the list is produced when it has more entries than a mapped task may have.

    Airflow's own check fires later, as "pushed value is too large to map", naming neither the
    limit nor the way out.

    :param count: the recipients to map over.
    """
    from airflow.providers.common.compat.sdk import conf

    limit = conf.getint("core", "max_map_length", fallback=1024)
    if count > limit:
        raise ValueError(
            f"{count} recipients, but a mapped task may have at most {limit} instances "
            f"([core] max_map_length = {limit}). Send a list this large with one "
            "SendWhatsAppCampaignOperator task (example DAG famulor_whatsapp_campaign): paced, "
            "with a ledger, up to 100,000 recipients; raising max_map_length only buys more task "
            "instances, each about 0.45 CPU-seconds of Airflow."
        )


with DAG(
    dag_id="famulor_whatsapp_per_recipient",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
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
        min_messaging_limit="{{ params.recipients | length }}",
        poke_interval=300,  # Famulor syncs sender status with Meta every 5 minutes
        timeout=6 * 3600,
    )

    list_senders = ListWhatsAppSendersOperator(
        task_id="list_senders",
        quality_ratings=["GREEN", "YELLOW"],
        min_messaging_limit="{{ params.recipients | length }}",
        order_by="capacity",
        if_empty="fail",
    )

    @task
    def pick_sender(senders: list[dict[str, Any]]) -> int:
        """The best sender: the list is ordered by capacity, best first."""
        best = senders[0]
        print(f"Sending from sender {best['id']} ({best['phone_number']}, {best['quality_rating']})")
        return int(best["id"])

    @task
    def recipients(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """One kwargs dict per recipient; a phone listed twice is messaged once."""
        seen: set[str] = set()
        kwargs: list[dict[str, Any]] = []
        for recipient in (params or {})["recipients"]:
            phone = normalize_phone(str(recipient["recipient_phone"]))
            if phone in seen:
                continue
            seen.add(phone)
            kwargs.append({key: recipient[key] for key in RECIPIENT_KEYS if recipient.get(key) is not None})
        check_map_length(len(kwargs))
        return kwargs

    @task
    def resolve_template(sender_id: int, params: dict[str, Any] | None = None) -> int:
        """The template's id, looked up once per run (not once per recipient)."""
        from famulor_provider.hooks.famulor import FamulorHook

        params = params or {}
        return FamulorHook().resolve_template_id(
            sender_id, template_name=params["template_name"], language=params["language"]
        )

    sender_id = pick_sender(list_senders.output)
    send_template = SendWhatsAppTemplateOperator.partial(
        task_id="send_template",
        sender_id=sender_id,
        template_id=resolve_template(sender_id),
        retries=2,
        retry_delay=timedelta(seconds=5),
    ).expand_kwargs(recipients())

    @task(trigger_rule="all_done")
    def report(messages: list[dict[str, Any]], params: dict[str, Any] | None = None) -> dict[str, int]:
        """Print how many recipients got a message id; fail naming a few that did not."""
        from famulor_provider.privacy import full_phone_numbers_in_logs, mask_phone

        sent = {m["recipient_phone"] for m in messages or []}
        wanted = {normalize_phone(str(r["recipient_phone"])) for r in (params or {})["recipients"]}
        missing = sorted(wanted - sent)
        print(f"{len(wanted) - len(missing)} of {len(wanted)} recipient(s) got a message id")
        if missing:
            show = str if full_phone_numbers_in_logs() else mask_phone  # phone numbers are personal data
            examples = ", ".join(show(phone) for phone in missing[:REPORT_EXAMPLES])
            more = f" and {len(missing) - REPORT_EXAMPLES} more" if len(missing) > REPORT_EXAMPLES else ""
            # A "delivery unknown" failure may still have sent it: its task log says how to check.
            raise RuntimeError(
                f"{len(missing)} of {len(wanted)} recipient(s) got no message id: {examples}{more}. "
                "See their send_template tasks (or the recipients task, if none ran)."
            )
        return {"recipients": len(wanted), "sent": len(wanted)}

    wait_for_sender >> list_senders
    report(send_template.output)
