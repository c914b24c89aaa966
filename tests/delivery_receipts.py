"""Record delivery receipts as asset events in the test session's metadata DB, as the receiver
does: ``extra = {"payload": <the webhook>, "dedupe_key": "<whatsapp_message_id>:<status>"}``."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from famulor_provider.webhooks.assets import (
    CONVERSATION_ENDED,
    EXTRA_DEDUPE_KEY,
    EXTRA_PAYLOAD,
    MESSAGE_STATUS,
    asset_name,
    conversation_ended_dedupe_key,
    message_status_dedupe_key,
)

ERRORS = {
    63016: "Message failed to send because more than 24 hours have passed since the customer last replied."
}


def receipt(message_id: Any, status: str, to: str = "+4915112345623", **fields: Any) -> dict[str, Any]:
    """A ``message_status`` webhook body as Famulor sends it."""
    code = fields.pop("error_code", None)
    return {
        "event": "message_status",
        "whatsapp_message_id": message_id,
        "message_sid": f"SM{message_id}",
        "meta_message_id": f"wamid.{message_id}",
        "conversation_id": None,
        "assistant_id": None,
        "sender": {"id": 12, "phone_number": "+14155551234", "display_name": "Acme"},
        "to": to,
        "from": "+14155551234",
        "direction": "outbound",
        "status": status,
        "error_code": code,
        "error_message": "Message failed" if code else None,
        "error_description": ERRORS.get(code) if code else None,
        "timestamp": datetime.now(timezone.utc).isoformat(),
        "provider_timestamp": datetime.now(timezone.utc).isoformat(),
        **fields,
    }


def record(
    payloads: list[dict[str, Any]],
    conn_id: str = "famulor_default",
    timestamp: datetime | None = None,
    kind: str = MESSAGE_STATUS,
) -> None:
    """Commit one asset event per payload (``timestamp``: the same instant for all, else now) to
    the ``kind`` asset (``message_status`` or ``conversation_ended``)."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    name = asset_name(conn_id, kind)
    dedupe_key = conversation_ended_dedupe_key if kind == CONVERSATION_ENDED else message_status_dedupe_key
    with create_session() as session:
        asset = session.scalar(select(AssetModel).where(AssetModel.name == name, AssetModel.uri == name))
        if asset is None:
            asset = AssetModel(name=name, uri=name, group="asset")
            session.add(asset)
            session.flush()
        for payload in payloads:
            extra = {EXTRA_PAYLOAD: payload, EXTRA_DEDUPE_KEY: dedupe_key(payload)}
            event = AssetEvent(asset_id=asset.id, extra=extra)
            if timestamp is not None:
                event.timestamp = timestamp
            session.add(event)


def stored_extras(name: str) -> list[dict[str, Any]]:
    """The ``extra`` of every asset event of the asset ``name`` in the metadata DB, oldest first."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == name)
            .order_by(AssetEvent.id)
        ).all()
        return [dict(row.extra) for row in rows]
