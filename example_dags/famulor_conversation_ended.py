"""Act on every conversation Famulor's assistant ended (Airflow 3.1+).

Scheduled on ``conversation_ended_asset()``: the provider's webhook receiver records each ended
conversation that Famulor posts as an event of ``famulor.famulor_default.conversation_ended``,
and the scheduler starts a run for the events since the last one. The task reads the variables
the assistant extracted, skipping a webhook Famulor delivered twice (same ``dedupe_key``). Its log
shows the conversation ids and the variables' names only: values, transcripts, names and numbers
are personal data, kept out of INFO lines; it returns the variables for the next task (here, a
CRM update would go).

A run started by hand (``airflow dags test``, as ``make demo`` does) reads the latest ended
conversation instead. Needs the receiver: the assistant's conversation-ended webhook set to
``https://<airflow>/famulor/webhooks/famulor_default/conversation-ended/<webhook_token>`` (see
the README).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_1_PLUS

log = logging.getLogger(__name__)

if AIRFLOW_V_3_1_PLUS:  # Airflow 2.11: no webhook receiver, so no DAG here (the file still parses)
    from airflow.sdk import DAG, task

    from famulor_provider.webhooks.assets import conversation_ended_asset

    ended = conversation_ended_asset("famulor_default")

    with DAG(
        dag_id="famulor_conversation_ended",
        schedule=[ended],
        start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
        catchup=False,
        tags=["famulor", "whatsapp", "webhooks"],
    ):

        @task(inlets=[ended], show_return_value_in_logs=False)  # the values are personal data
        def extracted_variables(
            triggering_asset_events: Any = None, inlet_events: Any = None
        ) -> list[dict[str, Any]]:
            events = list(triggering_asset_events[ended]) if triggering_asset_events else []
            if not events:  # started by hand: the latest ended conversation
                recorded = inlet_events[ended]  # Airflow 3.1: a list of every event, oldest first
                events = (
                    list(recorded.ascending(False).limit(1)) if hasattr(recorded, "limit") else recorded[-1:]
                )
            seen: set[str] = set()
            conversations = []
            for event in events:
                key, payload = event.extra.get("dedupe_key"), event.extra.get("payload") or {}
                if key in seen:
                    continue
                seen.add(key)
                variables = payload.get("extracted_variables") or {}
                log.info(
                    "Conversation %s (%s, %s messages) ended; extracted: %s",
                    payload.get("conversation_id"),
                    payload.get("type"),
                    payload.get("message_count"),
                    ", ".join(sorted(variables)) or "nothing",
                )
                conversations.append(
                    {"conversation_id": payload.get("conversation_id"), "extracted_variables": variables}
                )
            return conversations

        extracted_variables()
