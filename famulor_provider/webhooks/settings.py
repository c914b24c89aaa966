"""A Famulor connection's webhook settings: the signing secrets, the ended-conversation token.

Connection extras (Airflow masks their values: the key names contain ``secret`` and ``token``):

- ``webhook_signing_secrets``: one string (every sender's secret) or ``{"<sender_id>": "<secret>"}``,
  the secrets Famulor generated in each sender's webhook settings;
- ``webhook_token``: a long random string (at least ``MIN_TOKEN_LENGTH`` characters), the last part of
  the ended-conversation URL: ``python -c 'import secrets; print(secrets.token_urlsafe(32))'``;
- ``webhook_emit_test_events``: ``true`` to turn the settings' test button into asset events too.

Settings are read in the api-server and kept ``CACHE_SECONDS`` (a rotated secret applies within that).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

CONN_TYPE = "famulor"
MIN_TOKEN_LENGTH = 32
CACHE_SECONDS = 10.0


class WebhookConfigError(ValueError):
    """The connection's webhook extras are unusable; the message names the key and what to fix."""


@dataclass(frozen=True)
class WebhookSettings:
    """What the receiver needs of one connection (never logged: holds secrets)."""

    signing_secrets: str | dict[str, str] | None
    token: str | None
    emit_test_events: bool

    def __repr__(self) -> str:  # a stray log line or traceback must not show the secrets
        return (
            f"WebhookSettings(signing_secrets={'set' if self.signing_secrets else None}, "
            f"token={'set' if self.token else None}, emit_test_events={self.emit_test_events})"
        )

    def secret_for(self, sender_id: Any) -> str | None:
        """The signing secret of ``sender_id`` (the one secret when a single string is configured).

        :param sender_id: the ``sender.id`` of a webhook body.
        """
        if isinstance(self.signing_secrets, str):
            return self.signing_secrets
        if self.signing_secrets is None or isinstance(sender_id, bool) or sender_id is None:
            return None
        return self.signing_secrets.get(str(sender_id))


def parse_settings(extra: dict[str, Any]) -> WebhookSettings:
    """The webhook settings from a connection's extras; ``WebhookConfigError`` when they are unusable.

    :param extra: the connection's extras (``extra_dejson``).
    """
    secrets = extra.get("webhook_signing_secrets")
    if isinstance(secrets, str):
        secrets = secrets.strip() or None
    elif isinstance(secrets, dict):
        bad = [k for k, v in secrets.items() if not isinstance(v, str) or not v.strip()]
        if bad or not all(str(k).strip().isdigit() for k in secrets):
            raise WebhookConfigError(
                "webhook_signing_secrets must map each sender id (digits) to its non-empty signing secret"
            )
        secrets = {str(k).strip(): v.strip() for k, v in secrets.items()} or None
    elif secrets is not None:
        raise WebhookConfigError(
            'webhook_signing_secrets must be one string or {"<sender_id>": "<secret>"}, '
            f"not a {type(secrets).__name__}"
        )
    token = extra.get("webhook_token")
    if token is not None:
        if not isinstance(token, str) or len(token.strip()) < MIN_TOKEN_LENGTH:
            raise WebhookConfigError(
                f"webhook_token must be a random string of at least {MIN_TOKEN_LENGTH} characters: "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        token = token.strip()
    emit = extra.get("webhook_emit_test_events", False)
    if isinstance(emit, str) and emit.strip().lower() in ("true", "false"):
        emit = emit.strip().lower() == "true"
    if not isinstance(emit, bool):
        raise WebhookConfigError(f"webhook_emit_test_events must be true or false, not {emit!r}")
    return WebhookSettings(signing_secrets=secrets, token=token, emit_test_events=emit)


class SettingsCache:
    """Webhook settings per ``conn_id``, read through Airflow's secrets backends and kept a while.

    ``None`` for a connection that does not exist, is not a Famulor connection, or whose webhook
    extras are unusable (logged once per read, without values).
    """

    def __init__(self, ttl: float = CACHE_SECONDS) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, WebhookSettings | None]] = {}

    def get(self, conn_id: str) -> WebhookSettings | None:
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(conn_id)
            if hit is not None and hit[0] > now:
                return hit[1]
        settings = _read(conn_id)
        with self._lock:
            if len(self._entries) > 1000:  # unknown conn_ids cannot grow it without bound
                self._entries.clear()
            self._entries[conn_id] = (now + self.ttl, settings)
        return settings

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _read(conn_id: str) -> WebhookSettings | None:
    from airflow.models.connection import Connection
    from airflow.providers.common.compat.sdk import AirflowNotFoundException

    try:
        connection = Connection.get_connection_from_secrets(conn_id)
    except AirflowNotFoundException:
        return None
    if connection.conn_type != CONN_TYPE:
        log.warning("Webhook for connection %r refused: it is not a Famulor connection", conn_id)
        return None
    try:
        return parse_settings(connection.extra_dejson)
    except WebhookConfigError as exc:
        log.warning("Webhook for connection %r refused: %s", conn_id, exc)
        return None
