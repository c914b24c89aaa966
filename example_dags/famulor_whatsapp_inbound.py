"""Run a DAG for every message customers write to the business number (Airflow 3 event-driven).

The asset ``famulor_whatsapp_inbound`` is watched by ``WhatsAppInboundMessageTrigger`` in the
triggerer: every new customer message of the sender's WhatsApp conversations becomes one asset
event, and the DAG runs for them. Each event's ``extra["payload"]`` is the message (``conversation_id``,
``sender_phone``, ``customer_phone``, ``customer_name``, ``text``, ``message_index``,
``variables``, ``dedupe_key``). Several events may arrive in one run (Airflow queues them while a
run is pending): the task handles each one, and ``dedupe_key`` lets a real consumer skip a
message it already handled (after a triggerer crash a message may come twice). The task logs
counts and masked numbers at INFO; names and texts (personal data) only at DEBUG.

Needs a Famulor connection ``famulor_default`` (or the local sandbox:
``python -m famulor_provider.testing serve``, then make a customer write with
``python -m famulor_provider.testing receive --url ... --sender-phone +4930901820
--customer-phone +4915112345678 --text hello``).

Airflow 2.11 has no event-driven scheduling: there, this file defines no DAG.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone

from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_0_PLUS

SENDER_PHONE = os.environ.get("FAMULOR_EXAMPLE_INBOUND_SENDER_PHONE", "+4930901820")
# Famulor's account allows 100 requests per minute: 60 s keeps a poll within the polling budget.
# Tests and demos against the sandbox poll faster through this variable.
POLL_INTERVAL = float(os.environ.get("FAMULOR_EXAMPLE_INBOUND_POLL_INTERVAL", "60"))

if AIRFLOW_V_3_0_PLUS:  # Airflow 2.11: no AssetWatcher, so no DAG here (the file still parses)
    from airflow.sdk import DAG, Asset, AssetWatcher, task

    from famulor_provider.triggers.whatsapp import WhatsAppInboundMessageTrigger

    inbound = Asset(
        "famulor_whatsapp_inbound",
        watchers=[
            AssetWatcher(
                name="famulor_inbound",
                trigger=WhatsAppInboundMessageTrigger(sender_phone=SENDER_PHONE, poll_interval=POLL_INTERVAL),
            )
        ],
    )

    with DAG(
        dag_id="famulor_whatsapp_inbound",
        schedule=[inbound],
        start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
        catchup=False,
        tags=["famulor", "whatsapp", "example"],
    ):

        @task(inlets=[inbound])
        def handle_messages(**context: object) -> list[str]:
            """Log this run's messages: counts and masked numbers at INFO, names and texts at DEBUG."""
            from famulor_provider.privacy import phone_for_log

            log = logging.getLogger("famulor_whatsapp_inbound")
            events = list(context["triggering_asset_events"][inbound])  # type: ignore[index]
            # Airflow 3.3.2 leaves out of this run the events stored after the first one that queued
            # it and before the run was created, and they wait for the next event to start a run
            # (apache/airflow#56050, see the README): take them here, from the asset's events
            # after this run's run_after. One that also starts its own run comes twice, with the
            # same dedupe_key.
            asset_events = context["inlet_events"][inbound]  # type: ignore[index]
            if hasattr(asset_events, "after"):  # Airflow 3.3+: a query (3.1 reads every event)
                events += asset_events.after(context["dag_run"].run_after)  # type: ignore[attr-defined]
            payloads = [event.extra["payload"] for event in events if "payload" in (event.extra or {})]
            messages = {payload["dedupe_key"]: payload for payload in payloads}
            log.info("%d message(s) in this run", len(messages))
            handled = []
            for message in messages.values():
                log.info(
                    "Message %s from %s to %s",
                    message["dedupe_key"],
                    phone_for_log(message["customer_phone"]),
                    phone_for_log(message["sender_phone"]),
                )
                log.debug("%s wrote: %r", message["customer_name"], message["text"])
                handled.append(message["dedupe_key"])
            return handled

        handle_messages()
