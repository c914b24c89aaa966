"""Run a DAG for every message customers write to the business number (Airflow 3 event-driven).

The asset ``famulor_whatsapp_inbound`` is watched by ``WhatsAppInboundMessageTrigger`` in the
triggerer: every new customer message of the sender's WhatsApp conversations becomes one asset
event, and the DAG runs for them. An event says where the message is, never whose or what it is
(Airflow logs each event at INFO and stores it in ``asset_event``): the task turns the run's
events into the messages with ``inbound_messages`` (one read per conversation), each
``dedupe_key`` once. Several events may arrive in one run (Airflow queues them while a run is
pending), and after a triggerer crash a message may come twice: ``dedupe_key`` lets a real
consumer skip a message it already handled. The task logs counts and masked numbers at INFO;
names and texts (personal data) only at DEBUG.

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
            from famulor_provider.conversations.inbound_messages import inbound_messages
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
            found = inbound_messages(events)  # reads each conversation once; each dedupe_key once
            log.info("%d message(s) in this run", len(found.messages))
            if found.cut:  # messages deleted since the trigger read them (each one logged, no personal data)
                log.warning("%d message(s) cannot be read any longer: their history was cut", len(found.cut))
            handled = []
            for message in found.messages:
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
