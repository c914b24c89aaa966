"""The webhook receiver: a FastAPI app the api-server mounts under ``/famulor`` (Airflow 3.1+).

- ``POST /famulor/webhooks/<conn_id>/message-status``: delivery receipts, signed by Famulor with the
  sender's secret (``X-Signature-256: sha256=<hex HMAC-SHA256(raw body, secret)>``);
- ``POST /famulor/webhooks/<conn_id>/conversation-ended/<token>``: ended conversations (unsigned by
  Famulor: the token in the URL is the secret).

Each accepted webhook becomes one event of ``famulor.<conn_id>.message_status`` or
``famulor.<conn_id>.conversation_ended`` with ``extra`` ``{"payload", "dedupe_key"}``, committed to
the metadata database before the 2xx: whatever fails before that gets no 2xx, so Famulor retries.
Receipts arriving together share one transaction (``recorder``). An asset no DAG references yet is
created (active), so no receipt is lost for want of a consumer.

Answers: 200 accepted (or a test event acknowledged); 400 not a JSON object; 401 wrong or missing
signature or token; 404 no Famulor connection ``conn_id`` or nothing configured for this webhook;
413 body over the limit; 422 not the webhook's shape; 503 the database failed (Famulor retries).
Plugin apps are not behind Airflow's auth: this app serves these two routes and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from famulor_provider.privacy import phone_for_log
from famulor_provider.webhooks.assets import (
    CONVERSATION_ENDED,
    EXTRA_DEDUPE_KEY,
    EXTRA_PAYLOAD,
    MESSAGE_STATUS,
    asset_name,
    conversation_ended_dedupe_key,
    message_status_dedupe_key,
)
from famulor_provider.webhooks.recorder import EventRecorder
from famulor_provider.webhooks.settings import SettingsCache, WebhookSettings

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

URL_PREFIX = "/famulor"
MAX_STATUS_BODY = 64 * 1024
"""Bytes a delivery receipt may have (Famulor's are well under 2 KiB)."""
MAX_ENDED_BODY = 1024 * 1024
"""Bytes an ended conversation may have (it carries the whole transcript)."""
SIGNATURE_HEADER = "x-signature-256"
STATUSES = ("sent", "delivered", "read", "failed", "undelivered")
_CONN_ID = re.compile(r"[\w.-]{1,250}")  # what Airflow allows in a conn_id
_TOKEN_IN_PATH = re.compile(r"(/webhooks/[^/]+/conversation-ended/)[^/]*")

settings_cache = SettingsCache()
recorder = EventRecorder()


class Rejected(Exception):
    """An answer other than 200, with the reason the caller may read (never a secret or a value)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def redact_path(path: str) -> str:
    """``.../conversation-ended/<token>`` -> ``.../conversation-ended/***``.

    :param path: a request path.
    """
    return _TOKEN_IN_PATH.sub(r"\1***", path)


class RedactTokenInPath:
    """Replace the token in the request's ``path`` and ``raw_path`` with ``***`` once it is routed.

    Access logs read the scope this app shares with the server: uvicorn's (Airflow 3.1) logs
    ``raw_path`` when the answer starts, Airflow 3.3's ``http.access`` middleware logs ``path`` when
    the request is done. The token is replaced before the answer starts, so neither sees it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_redacted(message: Message) -> None:
            if message["type"] == "http.response.start":
                _redact_scope(scope)
            await send(message)

        try:
            await self.app(scope, receive, send_redacted)
        finally:
            _redact_scope(scope)


def _redact_scope(scope: Scope) -> None:
    scope["path"] = redact_path(scope["path"])
    if scope.get("raw_path"):
        scope["raw_path"] = redact_path(scope["raw_path"].decode("latin-1")).encode("latin-1")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, or ``Rejected(413)`` as soon as it is longer than ``limit`` bytes.

    :param request: the request.
    :param limit: the most bytes accepted.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Rejected(413, f"The body is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Rejected(413, f"The body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(raw)
    except ValueError:
        raise Rejected(400, "The body is not JSON") from None
    if not isinstance(payload, dict):
        raise Rejected(400, "The body is not a JSON object")
    return payload


def require_settings(conn_id: str) -> WebhookSettings:
    settings = settings_cache.get(conn_id) if _CONN_ID.fullmatch(conn_id) else None
    if settings is None:
        raise Rejected(404, "Unknown webhook configuration")
    return settings


def verify_signature(settings: WebhookSettings, raw: bytes, header: str | None) -> dict[str, Any]:
    """The body, once its signature checks out with its sender's secret; ``Rejected`` otherwise.

    :param settings: the connection's webhook settings (with ``signing_secrets``).
    :param raw: the body exactly as received.
    :param header: the ``X-Signature-256`` header.
    """
    if not header or not header.startswith("sha256="):
        raise Rejected(401, "Missing or malformed X-Signature-256 header")
    # The secret depends on sender.id, so a per-sender setting parses the body first (size-capped).
    payload = parse_json_object(raw) if isinstance(settings.signing_secrets, dict) else None
    sender = (payload or {}).get("sender")
    secret = settings.secret_for(sender.get("id") if isinstance(sender, dict) else None)
    expected = "" if secret is None else hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    given = header[len("sha256=") :].strip().lower()
    if not hmac.compare_digest(given.encode(), expected.encode()) or secret is None:
        raise Rejected(401, "The signature does not match")
    return payload if payload is not None else parse_json_object(raw)


def check_message_status(payload: dict[str, Any]) -> None:
    problems = []
    if payload.get("event") != "message_status":
        problems.append('event must be "message_status"')
    message_id = payload.get("whatsapp_message_id")
    if isinstance(message_id, bool) or not isinstance(message_id, (int, str)) or message_id == "":
        problems.append("whatsapp_message_id must be an integer")
    if not isinstance(payload.get("status"), str) or not payload["status"]:
        problems.append(f"status must be one of {', '.join(STATUSES)}")
    sender = payload.get("sender")
    if not isinstance(sender, dict) or "id" not in sender:
        problems.append("sender.id is missing")
    if problems:
        raise Rejected(422, "Not a message_status webhook: " + "; ".join(problems))


def check_conversation_ended(payload: dict[str, Any]) -> None:
    problems = []
    conversation_id = payload.get("conversation_id")
    if (
        not isinstance(conversation_id, (str, int))
        or isinstance(conversation_id, bool)
        or conversation_id == ""
    ):
        problems.append("conversation_id is missing")
    if payload.get("status") != "ended":
        problems.append('status must be "ended"')
    if problems:
        raise Rejected(422, "Not a conversation-ended webhook: " + "; ".join(problems))


def emit(name: str, payload: dict[str, Any], dedupe_key: str) -> None:
    """Record one asset event and return once it is committed (see ``recorder``).

    :param name: the asset's name (and URI).
    :param payload: the webhook's JSON.
    :param dedupe_key: the delivery's stable key.
    """
    recorder.record(name, {EXTRA_PAYLOAD: payload, EXTRA_DEDUPE_KEY: dedupe_key})


def _database_errors() -> tuple[type[BaseException], ...]:
    from sqlalchemy.exc import SQLAlchemyError

    return (SQLAlchemyError, TimeoutError)


def handle_message_status(conn_id: str, raw: bytes, signature_header: str | None) -> dict[str, Any]:
    """Check, verify and record one delivery receipt; the answer's JSON, or ``Rejected``.

    :param conn_id: the connection named by the URL.
    :param raw: the body as received.
    :param signature_header: the ``X-Signature-256`` header.
    """
    settings = require_settings(conn_id)
    if not settings.signing_secrets:
        raise Rejected(404, "Unknown webhook configuration")
    payload = verify_signature(settings, raw, signature_header)
    if payload.get("test") is True and not settings.emit_test_events:
        log.info("Famulor test receipt for connection %s acknowledged (no asset event)", conn_id)
        return {"ok": True, "test": True, "event": False}
    check_message_status(payload)
    key = message_status_dedupe_key(payload)
    _emit_or_503(asset_name(conn_id, MESSAGE_STATUS), payload, key)
    log.info(
        "Famulor receipt %s: message %s from sender %s to %s%s",
        payload["status"],
        payload["whatsapp_message_id"],
        payload["sender"].get("id"),
        phone_for_log(payload.get("to")),
        f" (error {payload.get('error_code')})" if payload.get("error_code") is not None else "",
    )
    return {"ok": True, "dedupe_key": key}


def handle_conversation_ended(conn_id: str, token: str, raw: bytes) -> dict[str, Any]:
    """Check the token, then record one ended conversation; the answer's JSON, or ``Rejected``.

    :param conn_id: the connection named by the URL.
    :param token: the URL's last part.
    :param raw: the body as received.
    """
    settings = require_settings(conn_id)
    if not settings.token:
        raise Rejected(404, "Unknown webhook configuration")
    if not hmac.compare_digest(token.encode(), settings.token.encode()):
        raise Rejected(401, "The token does not match")
    payload = parse_json_object(raw)
    if payload.get("test") is True and not settings.emit_test_events:
        return {"ok": True, "test": True, "event": False}
    check_conversation_ended(payload)
    key = conversation_ended_dedupe_key(payload)
    _emit_or_503(asset_name(conn_id, CONVERSATION_ENDED), payload, key)
    log.info(
        "Famulor conversation %s ended (%s messages, customer %s)",
        payload["conversation_id"],
        payload.get("message_count"),
        phone_for_log(payload.get("customer_phone")),
    )
    return {"ok": True, "dedupe_key": key}


def _emit_or_503(name: str, payload: dict[str, Any], key: str) -> None:
    try:
        emit(name, payload, key)
    except _database_errors() as exc:
        # The class only: a database error's text can carry the statement and its parameters.
        log.warning("Webhook not recorded, answering 503 so Famulor retries: %s", type(exc).__name__)
        raise Rejected(503, "The Airflow database is unavailable; retry later") from None


def create_app() -> FastAPI:
    """The FastAPI app with the two webhook routes (no docs, no OpenAPI schema, nothing else)."""
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(
        title="Famulor webhooks",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.add_middleware(RedactTokenInPath)

    def answer(result: dict[str, Any] | Rejected) -> JSONResponse:
        if isinstance(result, Rejected):
            headers = {"Retry-After": "30"} if result.status == 503 else None
            return JSONResponse({"detail": result.detail}, status_code=result.status, headers=headers)
        return JSONResponse(result, status_code=200)

    @app.post("/webhooks/{conn_id}/message-status")
    async def message_status(conn_id: str, request: Request) -> JSONResponse:
        try:
            raw = await read_body(request, MAX_STATUS_BODY)
            header = request.headers.get(SIGNATURE_HEADER)
            return answer(await run_in_threadpool(handle_message_status, conn_id, raw, header))
        except Rejected as rejected:
            _log_rejected("message-status", conn_id, rejected)
            return answer(rejected)

    @app.post("/webhooks/{conn_id}/conversation-ended/{token}")
    async def conversation_ended(conn_id: str, token: str, request: Request) -> JSONResponse:
        try:
            raw = await read_body(request, MAX_ENDED_BODY)
            return answer(await run_in_threadpool(handle_conversation_ended, conn_id, token, raw))
        except Rejected as rejected:
            _log_rejected("conversation-ended", conn_id, rejected)
            return answer(rejected)

    return app


def _log_rejected(route: str, conn_id: str, rejected: Rejected) -> None:
    if rejected.status != 503:
        log.warning(
            "Famulor %s webhook for %r refused (%s): %s", route, conn_id, rejected.status, rejected.detail
        )
