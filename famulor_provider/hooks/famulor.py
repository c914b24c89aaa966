"""FamulorHook: the Famulor Classic API with auth, deadlines, retries and typed errors.

Requests are sent sync (``requests``) or async (``httpx``, for triggers and async callbacks)
with the same connection settings, headers, deadline, error mapping and retry policy, all from
``famulor_provider.connection`` and ``famulor_provider.transport``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from datetime import datetime, timezone
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypedDict

import requests
import tenacity
from airflow.providers.common.compat.sdk import BaseHook

from famulor_provider.connection import FamulorConnectionConfig, connection_config
from famulor_provider.exceptions import (
    FamulorAPIError,
    FamulorConversationNotFoundError,
    FamulorDeliveryUnknownError,
    FamulorError,
    FamulorResponseError,
    FamulorValidationError,
)
from famulor_provider.get_provider_info import CONN_FIELDS, UI_FIELD_BEHAVIOUR
from famulor_provider.models import (
    ConversationHistory,
    WhatsAppConversation,
    WhatsAppMessage,
    WhatsAppSender,
    WhatsAppSessionStatus,
    WhatsAppTemplate,
    find_approved_template,
)
from famulor_provider.pacing import SEND_PACER, SendPacer
from famulor_provider.privacy import mask_phones_in_httpx_log
from famulor_provider.transport import (
    Attempt,
    data_list,
    httpx_error,
    httpx_mounts,
    httpx_trace,
    httpx_verify,
    is_retryable_read,
    is_retryable_send,
    may_have_sent,
    new_session,
    parse_response,
    requests_error,
    retry_policy,
    retry_sync,
    run_with_deadline,
    sync_attempt,
)
from famulor_provider.validation import (
    MAX_MESSAGE_CHARS,
    MAX_RECIPIENT_NAME_CHARS,
    check_choice,
    check_id,
    check_optional_int,
    check_phone,
    check_text,
    check_variables,
    is_blank,
)

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Connection
    from typing_extensions import Unpack

log = logging.getLogger(__name__)

SENDER_STATUSES = ("online", "offline", "all")
TEMPLATE_STATUSES = ("approved", "all")
SENDERS_PATH = "/user/whatsapp/senders"
CONVERSATIONS_PATH = "/user/conversations"
CONVERSATION_TYPES = ("whatsapp", "widget", "api", "test")
MAX_PER_PAGE = 100  # the API's maximum page size for conversations


class FamulorHook(BaseHook):
    """
    Interact with the Famulor Classic API (``https://app.famulor.de/api`` or a white-label host).

    The API key is the connection's password; the base URL its host. Every attempt ends within
    the connection's ``timeout`` (connecting included). Reads retry on 429, 5xx, timeouts and
    connection errors, honouring ``Retry-After``; sends retry only where nothing can have been sent.

    :param famulor_conn_id: the Famulor connection.
    :param timeout: seconds one attempt may take in all (default: the connection's ``timeout``
        extra, else 30).
    :param max_retries: retries of a read (default: the connection's ``max_retries`` extra, else 5).
    """

    conn_type = "famulor"
    conn_name_attr = "famulor_conn_id"
    default_conn_name = "famulor_default"
    hook_name = "Famulor"

    # Injectable for tests: the sleepers used between retries and by the pacer.
    sleep: Callable[[float], None] = staticmethod(time.sleep)
    async_sleep: Callable[[float], Awaitable[None]] = staticmethod(asyncio.sleep)
    # The process-wide send pacer (injectable for tests).
    send_pacer: SendPacer = SEND_PACER

    def __init__(
        self,
        famulor_conn_id: str = default_conn_name,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
    ) -> None:
        super().__init__()
        self.famulor_conn_id = famulor_conn_id
        self.timeout = timeout
        self.max_retries = max_retries

    # -- connection ------------------------------------------------------------------------------

    @cached_property
    def config(self) -> FamulorConnectionConfig:
        """The resolved connection (loaded on first use, never in ``__init__``)."""
        return self._config(self.get_connection(self.famulor_conn_id))

    def _config(self, conn: Connection) -> FamulorConnectionConfig:
        return connection_config(conn, timeout=self.timeout, max_retries=self.max_retries)

    async def aget_config(self) -> FamulorConnectionConfig:
        """The resolved connection, loaded without blocking the event loop."""
        if "config" not in self.__dict__:
            aget_connection = getattr(self, "aget_connection", None)
            if aget_connection is not None:  # Airflow 3
                conn = await aget_connection(self.famulor_conn_id)
            else:  # Airflow 2.11 has no async connection lookup
                conn = await asyncio.to_thread(self.get_connection, self.famulor_conn_id)
            self.__dict__["config"] = self._config(conn)
        return self.config

    @cached_property
    def session(self) -> requests.Session:
        """One keep-alive session per hook, carrying the auth and identity headers."""
        return new_session(self.config.headers)

    # -- requests --------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Mapping[str, Any] | None = None,
        retryable: Callable[[BaseException], bool] = is_retryable_read,
        max_retries: int | None = None,
        before_attempt: Callable[[], None] | None = None,
    ) -> Any:
        """Send one API request with the deadline and retry policy; return the JSON answer.

        :param before_attempt: called before every attempt (sends use it to pace themselves).
        """
        config = self.config
        endpoint = f"{method} {path}"

        def attempt() -> Any:
            if before_attempt is not None:
                before_attempt()
            with sync_attempt(config.deadline) as progress:
                try:
                    response = self.session.request(
                        method,
                        config.base_url + path,
                        params=params,
                        json=json_body,
                        timeout=(config.connect_timeout, config.deadline),
                        # Per request: a session-level False loses to REQUESTS_CA_BUNDLE in requests.
                        verify=config.verify_ssl,
                        allow_redirects=False,
                    )
                except requests.RequestException as err:
                    raise requests_error(endpoint, config, progress, err) from err
            return parse_response(endpoint, response.status_code, response.headers, response.content, config)

        retries = config.max_retries if max_retries is None else max_retries
        return retry_sync(attempt, retryable, lambda: retry_policy(retries, retryable, self.sleep))

    async def arequest(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Mapping[str, Any] | None = None,
        retryable: Callable[[BaseException], bool] = is_retryable_read,
        max_retries: int | None = None,
        before_attempt: Callable[[], Awaitable[None]] | None = None,
    ) -> Any:
        """Async twin of :meth:`request` (httpx)."""
        import httpx

        config = await self.aget_config()
        endpoint = f"{method} {path}"
        verify = httpx_verify(config.verify_ssl)
        mask_phones_in_httpx_log()  # httpx logs each request's URL, query included, at INFO
        async with httpx.AsyncClient(
            headers=config.headers,
            trust_env=False,  # the proxy is decided by the sync path's rule: httpx_mounts
            mounts=httpx_mounts(config.base_url, verify),
            timeout=httpx.Timeout(config.deadline, connect=config.connect_timeout),
            verify=verify,
            follow_redirects=False,
        ) as client:

            async def attempt() -> Any:
                if before_attempt is not None:
                    await before_attempt()
                progress = Attempt(config.deadline)
                request = client.request(
                    method,
                    config.base_url + path,
                    params=params,
                    json=json_body,
                    extensions={"trace": httpx_trace(progress)},
                )
                try:
                    response = await run_with_deadline(progress, request)
                # httpx leaves a TLS error while reading the answer unwrapped (anyio's TLS stream).
                except (httpx.HTTPError, asyncio.TimeoutError, ssl.SSLError) as err:
                    raise httpx_error(endpoint, config, progress, err) from err
                return parse_response(
                    endpoint, response.status_code, response.headers, response.content, config
                )

            retries = config.max_retries if max_retries is None else max_retries
            policy = retry_policy(retries, retryable, self.async_sleep)
            return await tenacity.AsyncRetrying(**policy)(attempt)

    # -- API -------------------------------------------------------------------------------------

    def list_whatsapp_senders(self, status: str = "online") -> list[WhatsAppSender]:
        """
        List the account's WhatsApp senders (``GET /user/whatsapp/senders``).

        :param status: ``online`` (the API's default), ``offline``, or ``all`` for every sender.
        """
        payload = self.request("GET", SENDERS_PATH, params={"status": _sender_status(status)})
        return [WhatsAppSender.from_api(item) for item in data_list(f"GET {SENDERS_PATH}", payload)]

    async def alist_whatsapp_senders(
        self, status: str = "online", *, max_retries: int | None = None
    ) -> list[WhatsAppSender]:
        """Async twin of :meth:`list_whatsapp_senders`.

        :param max_retries: retries of this call (default: the connection's).
        """
        params = {"status": _sender_status(status)}
        payload = await self.arequest("GET", SENDERS_PATH, params=params, max_retries=max_retries)
        return [WhatsAppSender.from_api(item) for item in data_list(f"GET {SENDERS_PATH}", payload)]

    def list_whatsapp_templates(self, sender_id: int, status: str = "approved") -> list[WhatsAppTemplate]:
        """
        List a sender's message templates (``GET /user/whatsapp/senders/{sender_id}/templates``).

        :param sender_id: the sender.
        :param status: ``approved`` (the API's default) or ``all``.
        """
        path, params = _templates_request(sender_id, status)
        return [
            WhatsAppTemplate.from_api(i)
            for i in data_list(f"GET {path}", self.request("GET", path, params=params))
        ]

    async def alist_whatsapp_templates(
        self, sender_id: int, status: str = "approved"
    ) -> list[WhatsAppTemplate]:
        """Async twin of :meth:`list_whatsapp_templates`."""
        path, params = _templates_request(sender_id, status)
        payload = await self.arequest("GET", path, params=params)
        return [WhatsAppTemplate.from_api(i) for i in data_list(f"GET {path}", payload)]

    def resolve_template_id(
        self,
        sender_id: int,
        template_id: Any = None,
        template_name: Any = None,
        language: Any = None,
    ) -> int:
        """``template_id`` as given, or the id of the sender's approved template ``template_name``.

        Exactly one of the two must be given (a blank rendered value counts as not given).

        :param sender_id: the sender.
        :param template_id: the template's id.
        :param template_name: the approved template's name (one ``GET`` of the templates).
        :param language: the template's language, when its name is approved in several.
        """
        name, lang = _template_choice(template_id, template_name, language)
        if name is None:
            return check_id(template_id, "template_id")
        templates = self.list_whatsapp_templates(sender_id, status="all")
        return _log_template(find_approved_template(templates, name, lang, check_id(sender_id, "sender_id")))

    async def aresolve_template_id(
        self,
        sender_id: int,
        template_id: Any = None,
        template_name: Any = None,
        language: Any = None,
    ) -> int:
        """Async twin of :meth:`resolve_template_id`."""
        name, lang = _template_choice(template_id, template_name, language)
        if name is None:
            return check_id(template_id, "template_id")
        templates = await self.alist_whatsapp_templates(sender_id, status="all")
        return _log_template(find_approved_template(templates, name, lang, check_id(sender_id, "sender_id")))

    def get_whatsapp_session_status(self, sender_id: int, recipient_phone: str) -> WhatsAppSessionStatus:
        """
        Whether a free-form message can be sent now (``GET /user/whatsapp/session-status``).

        :param sender_id: the sender.
        :param recipient_phone: the recipient (E.164).
        """
        params = {
            "sender_id": check_id(sender_id, "sender_id"),
            "recipient_phone": check_phone(recipient_phone),
        }
        # requests URL-encodes the '+' of the phone as %2B (a bare '+' would decode as a space).
        payload = self.request("GET", "/user/whatsapp/session-status", params=params)
        return WhatsAppSessionStatus.from_api(payload)

    def iter_conversation_pages(
        self, *, max_retries: int | None = None, **filters: Unpack[ConversationFilters]
    ) -> Iterator[list[WhatsAppConversation]]:
        """
        Walk ``GET /user/conversations`` page by page (cursor pagination), one list per page.

        Stop iterating to stop early. The listing's order is not documented: never rely on it.

        :param max_retries: retries of each page (default: the connection's).
        :param filters: see :class:`ConversationFilters`.
        """
        params = _conversation_params(filters)
        cursors: set[str] = set()
        while True:
            payload = self.request("GET", CONVERSATIONS_PATH, params=params, max_retries=max_retries)
            yield _conversations(payload)
            cursor = _next_cursor(payload, cursors)
            if cursor is None:
                return
            params = {**params, "cursor": cursor}

    async def aiter_conversation_pages(
        self,
        *,
        max_retries: int | None = None,
        before_page: Callable[[], Awaitable[None]] | None = None,
        **filters: Unpack[ConversationFilters],
    ) -> AsyncIterator[list[WhatsAppConversation]]:
        """Async twin of :meth:`iter_conversation_pages`.

        :param before_page: awaited before each page's request (pollers take a budget slot there).
        """
        params = _conversation_params(filters)
        cursors: set[str] = set()
        while True:
            if before_page is not None:
                await before_page()
            payload = await self.arequest("GET", CONVERSATIONS_PATH, params=params, max_retries=max_retries)
            yield _conversations(payload)
            cursor = _next_cursor(payload, cursors)
            if cursor is None:
                return
            params = {**params, "cursor": cursor}

    async def aget_conversation_page(
        self,
        cursor: str | None = None,
        *,
        max_retries: int | None = None,
        **filters: Unpack[ConversationFilters],
    ) -> tuple[list[WhatsAppConversation], str | None]:
        """One page of ``GET /user/conversations``: its conversations and the ``next_cursor``.

        A walk can stop after any page and resume later from the cursor it kept (the API's
        cursors are keyset cursors: a page starts after the key of the previous page's last item).

        :param cursor: where the page starts (``None``: the first page).
        :param max_retries: retries of this page (default: the connection's).
        :param filters: see :class:`ConversationFilters`.
        """
        params = _conversation_params(filters)
        if cursor is not None:
            params = {**params, "cursor": cursor}
        payload = await self.arequest("GET", CONVERSATIONS_PATH, params=params, max_retries=max_retries)
        return _conversations(payload), _next_cursor(payload, set())

    def list_conversations(
        self, *, max_retries: int | None = None, **filters: Unpack[ConversationFilters]
    ) -> list[WhatsAppConversation]:
        """Every conversation that matches the filters (:class:`ConversationFilters`), walking every
        page: an account with N conversations costs ``ceil(N / per_page)`` requests.

        :param max_retries: retries of each page (default: the connection's).
        """
        return [c for page in self.iter_conversation_pages(max_retries=max_retries, **filters) for c in page]

    async def alist_conversations(
        self, *, max_retries: int | None = None, **filters: Unpack[ConversationFilters]
    ) -> list[WhatsAppConversation]:
        """Async twin of :meth:`list_conversations`."""
        pages = self.aiter_conversation_pages(max_retries=max_retries, **filters)
        return [c async for page in pages for c in page]

    def get_conversation(
        self, conversation_id: str, *, max_retries: int | None = None
    ) -> ConversationHistory:
        """
        Read a conversation's history (``GET /conversations/{uuid}``).

        :param conversation_id: the conversation's uuid (the ``id`` of the listing).
        :param max_retries: retries of this call (default: the connection's).
        :raises FamulorConversationNotFoundError: no conversation has this id (404).
        """
        path = _conversation_path(conversation_id)
        try:
            payload = self.request("GET", path, max_retries=max_retries)
        except FamulorAPIError as err:
            raise _not_found(err, conversation_id) from err
        return ConversationHistory.from_api(str(conversation_id).strip(), payload)

    async def aget_conversation(
        self, conversation_id: str, *, max_retries: int | None = None
    ) -> ConversationHistory:
        """Async twin of :meth:`get_conversation`."""
        path = _conversation_path(conversation_id)
        try:
            payload = await self.arequest("GET", path, max_retries=max_retries)
        except FamulorAPIError as err:
            raise _not_found(err, conversation_id) from err
        return ConversationHistory.from_api(str(conversation_id).strip(), payload)

    def send_whatsapp_template(
        self,
        sender_id: int,
        template_id: int,
        recipient_phone: str,
        *,
        variables: Mapping[str, Any] | None = None,
        recipient_name: str | None = None,
    ) -> WhatsAppMessage:
        """
        Send an approved template message (``POST /user/whatsapp/send``; billed, not idempotent).

        Retried only where the API cannot have accepted it (429, never sent). When the outcome is
        unknown (the deadline passed, the connection broke after sending, a 5xx, a redirect), raises
        ``FamulorDeliveryUnknownError`` and never retries.

        :param sender_id: the sender.
        :param template_id: the approved template.
        :param recipient_phone: the recipient (E.164).
        :param variables: the template's variables, e.g. ``{"1": "A-1234"}``.
        :param recipient_name: the recipient's name (at most 255 characters).
        """
        body = _template_body(sender_id, template_id, recipient_phone, variables, recipient_name)
        return self._send("/user/whatsapp/send", body)

    async def asend_whatsapp_template(
        self,
        sender_id: int,
        template_id: int,
        recipient_phone: str,
        *,
        variables: Mapping[str, Any] | None = None,
        recipient_name: str | None = None,
    ) -> WhatsAppMessage:
        """Async twin of :meth:`send_whatsapp_template`, with the same retry rule."""
        body = _template_body(sender_id, template_id, recipient_phone, variables, recipient_name)
        return await self._asend("/user/whatsapp/send", body)

    def send_whatsapp_freeform(self, sender_id: int, recipient_phone: str, message: str) -> WhatsAppMessage:
        """
        Send a free-form text inside an open 24-hour window (``POST /user/whatsapp/send-freeform``).

        Same retry rule as :meth:`send_whatsapp_template`; an expired window raises
        ``FamulorSessionExpiredError``.

        :param sender_id: the sender.
        :param recipient_phone: the recipient (E.164).
        :param message: the text (at most 4096 characters).
        """
        return self._send("/user/whatsapp/send-freeform", _freeform_body(sender_id, recipient_phone, message))

    async def asend_whatsapp_freeform(
        self, sender_id: int, recipient_phone: str, message: str
    ) -> WhatsAppMessage:
        """Async twin of :meth:`send_whatsapp_freeform`."""
        body = _freeform_body(sender_id, recipient_phone, message)
        return await self._asend("/user/whatsapp/send-freeform", body)

    def _send(self, path: str, body: dict[str, Any]) -> WhatsAppMessage:
        """POST one checked send: paced, retried only if nothing can have been sent."""
        attempted_at: list[datetime] = []

        def before_attempt() -> None:
            self.send_pacer.wait(self.famulor_conn_id, self.sleep)
            attempted_at.append(datetime.now(timezone.utc))

        self.session  # noqa: B018  (built before taking a send slot, so the slot is not spent on set-up)
        _log_send(body)
        try:
            payload = self.request(
                "POST", path, json_body=body, retryable=is_retryable_send, before_attempt=before_attempt
            )
        except FamulorError as err:
            if attempted_at and may_have_sent(err):
                raise self._delivery_unknown(path, body, attempted_at[-1], err) from err
            raise
        return self._sent_message(path, body, attempted_at, payload)

    async def _asend(self, path: str, body: dict[str, Any]) -> WhatsAppMessage:
        """Async twin of :meth:`_send`."""
        attempted_at: list[datetime] = []
        await self.aget_config()

        async def before_attempt() -> None:
            delay = self.send_pacer.reserve(self.famulor_conn_id)
            if delay > 0:
                await self.async_sleep(delay)
            attempted_at.append(datetime.now(timezone.utc))

        _log_send(body)
        try:
            payload = await self.arequest(
                "POST", path, json_body=body, retryable=is_retryable_send, before_attempt=before_attempt
            )
        except FamulorError as err:
            if attempted_at and may_have_sent(err):
                raise self._delivery_unknown(path, body, attempted_at[-1], err) from err
            raise
        return self._sent_message(path, body, attempted_at, payload)

    def _sent_message(
        self, path: str, body: Mapping[str, Any], attempted_at: list[datetime], payload: Any
    ) -> WhatsAppMessage:
        if not isinstance(payload, Mapping) or payload.get("success") is False:
            cause = FamulorResponseError(f"POST {path} answered 2xx without success: true")
            raise self._delivery_unknown(path, body, attempted_at[-1], cause) from cause
        from famulor_provider.privacy import phone_for_log

        message = WhatsAppMessage.from_api(
            payload,
            sender_id=body["sender_id"],
            recipient_phone=body["recipient_phone"],
            template_id=body.get("template_id"),
        )
        log.info(
            "WhatsApp message %s to %s accepted (%s)",
            message.message_id,
            phone_for_log(message.recipient_phone),
            message.status,
        )
        log.debug("WhatsApp message %s went to %s", message.message_id, message.recipient_phone)
        return message

    def _delivery_unknown(
        self, path: str, body: Mapping[str, Any], attempted_at: datetime, cause: FamulorError
    ) -> FamulorDeliveryUnknownError:
        from famulor_provider.privacy import phone_for_log

        # The text reaches the task log: the phone is masked like an INFO line (sender, minute and
        # the kept digits find the message in Famulor); the full number is on the exception.
        when = attempted_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        phone = phone_for_log(body["recipient_phone"])
        text = (
            f"Delivery unknown: the WhatsApp message from sender {body['sender_id']} to "
            f"{phone} (POST {path} at {when}) may have been sent and billed. "
            "It was not retried, so the recipient cannot get it twice. Before sending again, check "
            f"in Famulor whether sender {body['sender_id']} messaged {phone} around {when} (the full "
            "number is the send's recipient_phone: the task's rendered field, the campaign ledger, "
            f"or this error's recipient_phone attribute). Cause: {cause}"
        )
        log.debug("Delivery unknown for %s", body["recipient_phone"])
        return FamulorDeliveryUnknownError(
            self.config.scrub(text),
            sender_id=body["sender_id"],
            recipient_phone=body["recipient_phone"],
            attempted_at=attempted_at,
            status_code=getattr(cause, "status_code", None),
            error_code=getattr(cause, "error_code", None),
        )

    def test_connection(self) -> tuple[bool, str]:
        """Check the key and the base URL with one read-only ``GET /user/me`` (no retries)."""
        try:
            me = self.request("GET", "/user/me", max_retries=0)
        except FamulorError as err:
            return False, str(err)
        except Exception as err:  # the UI shows this text: never let a raw error leak the key
            text = f"{type(err).__name__}: {err}"
            return False, self.config.scrub(text) if "config" in self.__dict__ else text
        name = me.get("name") if isinstance(me, Mapping) else None
        return True, f"Connected to Famulor at {self.config.base_url}" + (f" as {name}" if name else "")

    # -- connection form (Airflow 2.11 and 3.1; 3.2+ reads get_provider_info) -------------------

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hide, relabel and describe the standard connection fields."""
        return {
            "hidden_fields": list(UI_FIELD_BEHAVIOUR["hidden-fields"]),
            "relabeling": dict(UI_FIELD_BEHAVIOUR["relabeling"]),
            "placeholders": dict(UI_FIELD_BEHAVIOUR["placeholders"]),
        }

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The extra fields of the connection form, built from the same ``CONN_FIELDS``."""
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import BooleanField, IntegerField, StringField
        from wtforms.validators import NumberRange, Optional

        timeout, retries, verify = (CONN_FIELDS[n] for n in ("timeout", "max_retries", "verify_ssl"))
        return {
            "timeout": StringField(
                lazy_gettext(timeout["label"]),
                description=timeout["description"],
                default=f"{timeout['schema']['default']:g}",
                widget=BS3TextFieldWidget(),
            ),
            "max_retries": IntegerField(
                lazy_gettext(retries["label"]),
                description=retries["description"],
                default=retries["schema"]["default"],
                validators=[Optional(), NumberRange(min=0)],
                widget=BS3TextFieldWidget(),
            ),
            "verify_ssl": BooleanField(
                lazy_gettext(verify["label"]),
                description=verify["description"],
                default=verify["schema"]["default"],
            ),
        }


class ConversationFilters(TypedDict, total=False):
    """The filters of ``GET /user/conversations``; each an exact match, ``None`` leaves it out.

    :param type: ``whatsapp`` (default), ``widget``, ``api``, ``test``, or ``None`` for all.
    :param customer_phone: only the conversations with this customer (E.164).
    :param whatsapp_sender_phone: only the conversations of this business number (E.164).
    :param assistant_id: only the conversations of this assistant.
    :param external_identifier: only the conversations with this external identifier.
    :param per_page: conversations per page, 1-100 (default 100: the fewest requests).
    """

    type: str | None
    customer_phone: str | None
    whatsapp_sender_phone: str | None
    assistant_id: Any
    external_identifier: str | None
    per_page: int


def _conversation_params(filters: ConversationFilters) -> dict[str, Any]:
    unknown = sorted(set(filters) - set(ConversationFilters.__annotations__))
    if unknown:
        raise TypeError(
            f"unknown conversation filter(s) {unknown}; known: {sorted(ConversationFilters.__annotations__)}"
        )
    kind = filters.get("type", "whatsapp")
    customer_phone = filters.get("customer_phone")
    whatsapp_sender_phone = filters.get("whatsapp_sender_phone")
    assistant_id = filters.get("assistant_id")
    external_identifier = filters.get("external_identifier")
    per_page = filters.get("per_page", MAX_PER_PAGE)
    size = check_optional_int(per_page, "per_page", minimum=1)
    if size is None or size > MAX_PER_PAGE:
        raise FamulorValidationError("per_page", f"must be 1-{MAX_PER_PAGE}, got {per_page!r}")
    # requests and httpx URL-encode the '+' of the phones as %2B (a bare '+' would decode as a space).
    params: dict[str, Any] = {"per_page": size}
    if not is_blank(kind):
        params["type"] = check_choice("type", kind, CONVERSATION_TYPES)
    if not is_blank(customer_phone):
        params["customer_phone"] = check_phone(customer_phone, "customer_phone")
    if not is_blank(whatsapp_sender_phone):
        params["whatsapp_sender_phone"] = check_phone(whatsapp_sender_phone, "whatsapp_sender_phone")
    if not is_blank(assistant_id):
        params["assistant_id"] = str(assistant_id).strip()
    if not is_blank(external_identifier):
        params["external_identifier"] = str(external_identifier)
    return params


def _conversations(payload: Any) -> list[WhatsAppConversation]:
    return [WhatsAppConversation.from_api(i) for i in data_list(f"GET {CONVERSATIONS_PATH}", payload)]


def _next_cursor(payload: Any, seen: set[str]) -> str | None:
    """The next page's cursor, or ``None`` on the last page; a cursor seen before is an error."""
    cursor = payload.get("next_cursor") if isinstance(payload, Mapping) else None
    if cursor in (None, ""):
        return None
    cursor = str(cursor)
    if cursor in seen:  # a loop would poll forever
        raise FamulorResponseError(f"GET {CONVERSATIONS_PATH} returned a next_cursor it returned before")
    seen.add(cursor)
    return cursor


def _conversation_path(conversation_id: Any) -> str:
    from urllib.parse import quote

    if is_blank(conversation_id):
        raise FamulorValidationError("conversation_id", "is empty: give the conversation's uuid (its 'id')")
    return f"/conversations/{quote(str(conversation_id).strip(), safe='')}"


def _not_found(err: FamulorAPIError, conversation_id: Any) -> FamulorAPIError:
    if err.status_code != 404:
        return err
    return FamulorConversationNotFoundError(
        f"{err} (conversation {str(conversation_id).strip()!r} does not exist in this account)",
        status_code=404,
        error_code=err.error_code,
    )


def _sender_status(status: Any) -> str:
    return str(check_choice("status", status, SENDER_STATUSES))


def _templates_request(sender_id: Any, status: Any) -> tuple[str, dict[str, str]]:
    path = f"/user/whatsapp/senders/{check_id(sender_id, 'sender_id')}/templates"
    return path, {"status": str(check_choice("status", status, TEMPLATE_STATUSES))}


def _template_body(
    sender_id: Any, template_id: Any, recipient_phone: Any, variables: Any, recipient_name: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sender_id": check_id(sender_id, "sender_id"),
        "template_id": check_id(template_id, "template_id"),
        "recipient_phone": check_phone(recipient_phone),
    }
    name = check_text(recipient_name, "recipient_name", MAX_RECIPIENT_NAME_CHARS, required=False)
    if name:
        body["recipient_name"] = name
    checked_variables = check_variables(variables)
    if checked_variables is not None:
        body["variables"] = checked_variables
    return body


def _freeform_body(sender_id: Any, recipient_phone: Any, message: Any) -> dict[str, Any]:
    return {
        "sender_id": check_id(sender_id, "sender_id"),
        "recipient_phone": check_phone(recipient_phone),
        "message": check_text(message, "message", MAX_MESSAGE_CHARS, required=True),
    }


def _template_choice(template_id: Any, template_name: Any, language: Any) -> tuple[str | None, str | None]:
    """(name, language) when the template is given by name, (None, None) when by id."""
    if is_blank(template_id) == is_blank(template_name):
        raise FamulorValidationError("template_id", "give either template_id or template_name (not both)")
    if is_blank(template_name):
        return None, None
    return str(template_name).strip(), None if is_blank(language) else str(language).strip()


def _log_template(template: WhatsAppTemplate) -> int:
    log.info("Template %r (%s) is id %s", template.name, template.language, template.id)
    return template.id


def _log_send(body: Mapping[str, Any]) -> None:
    from famulor_provider.privacy import phone_for_log

    what = f"template {body['template_id']}" if "template_id" in body else "free-form message"
    phone = body["recipient_phone"]
    log.info("Sending WhatsApp %s from sender %s to %s", what, body["sender_id"], phone_for_log(phone))
    log.debug("Sending to %s", phone)
