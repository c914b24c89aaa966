"""The assets Famulor's webhooks feed, and the keys of their events' ``extra``.

The receiver (``famulor_provider.webhooks.receiver``, Airflow 3.1+) turns each accepted webhook into
one asset event whose ``extra`` is ``{"payload": <the webhook's JSON as received>, "dedupe_key": ...}``:

- ``famulor.<conn_id>.message_status``: delivery receipts,
  ``dedupe_key`` ``"<whatsapp_message_id>:<status>"``;
- ``famulor.<conn_id>.conversation_ended``: ended conversations,
  ``dedupe_key`` ``"<conversation_id>:ended"``.

A webhook may arrive twice (Famulor retries when it gets no 2xx): a consumer skips an event whose
``dedupe_key`` it has already handled.

Airflow is imported inside the helpers, so importing this module at DAG parse costs nothing. On
Airflow 2.11 the helpers return a ``Dataset`` of the same name (DAG files still parse), but no
receiver exists there, so nothing produces its events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from airflow.sdk import Asset

DEFAULT_CONN_ID = "famulor_default"

EXTRA_PAYLOAD = "payload"
"""Key of an event's ``extra`` holding the webhook's JSON body as Famulor sent it."""
EXTRA_DEDUPE_KEY = "dedupe_key"
"""Key of an event's ``extra`` holding the delivery's stable key (same webhook twice, same key)."""

MESSAGE_STATUS = "message_status"
CONVERSATION_ENDED = "conversation_ended"


def asset_name(conn_id: str, kind: str) -> str:
    """``famulor.<conn_id>.<kind>``, the name (and URI) of a webhook asset.

    :param conn_id: the Famulor connection the webhooks are configured for.
    :param kind: ``message_status`` or ``conversation_ended``.
    """
    if kind not in (MESSAGE_STATUS, CONVERSATION_ENDED):
        raise ValueError(f"kind must be {MESSAGE_STATUS!r} or {CONVERSATION_ENDED!r}, not {kind!r}")
    if not isinstance(conn_id, str) or not conn_id:
        raise ValueError(f"conn_id must be a non-empty string, not {conn_id!r}")
    return f"famulor.{conn_id}.{kind}"


def _asset(name: str) -> Asset:
    try:
        from airflow.sdk import Asset
    except ImportError:  # Airflow 2.11: no receiver, but DAG files scheduled on it still parse
        from airflow.datasets import Dataset

        return Dataset(name)
    return Asset(name)


def message_status_asset(conn_id: str = DEFAULT_CONN_ID) -> Asset:
    """The asset of the delivery receipts (``sent``, ``delivered``, ``read``, ``failed``, ``undelivered``).

    :param conn_id: the Famulor connection whose receiver URL the sender posts to.
    """
    return _asset(asset_name(conn_id, MESSAGE_STATUS))


def conversation_ended_asset(conn_id: str = DEFAULT_CONN_ID) -> Asset:
    """The asset of the ended-conversation webhooks.

    :param conn_id: the Famulor connection whose receiver URL the assistant posts to.
    """
    return _asset(asset_name(conn_id, CONVERSATION_ENDED))


def message_status_dedupe_key(payload: Mapping[str, Any]) -> str:
    """``"<whatsapp_message_id>:<status>"``: Famulor's statuses may repeat, never for another key.

    :param payload: a ``message_status`` webhook body.
    """
    return f"{payload['whatsapp_message_id']}:{payload['status']}"


def conversation_ended_dedupe_key(payload: Mapping[str, Any]) -> str:
    """``"<conversation_id>:ended"``.

    :param payload: a conversation-ended webhook body.
    """
    return f"{payload['conversation_id']}:ended"
