"""FamulorHook: the Famulor Classic API with auth, timeouts, retries and typed errors.

One place builds every request, sync (``requests``) and async (``httpx``, for triggers):
the same connection settings, headers, https rule, error mapping and retry policy.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import requests
import tenacity
from airflow.providers.common.compat.sdk import BaseHook, mask_secret

from famulor_provider import __version__
from famulor_provider.exceptions import (
    FamulorAPIError,
    FamulorAuthError,
    FamulorConnectionError,
    FamulorDeliveryUnknownError,
    FamulorError,
    FamulorInsufficientBalanceError,
    FamulorInvalidPhoneError,
    FamulorRateLimitError,
    FamulorResponseError,
    FamulorSenderOfflineError,
    FamulorSessionExpiredError,
    FamulorTemplateError,
    FamulorTimeoutError,
    FamulorValidationError,
)
from famulor_provider.get_provider_info import (
    CONN_FIELDS,
    DEFAULT_BASE_URL,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    UI_FIELD_BEHAVIOUR,
)
from famulor_provider.models import (
    WhatsAppMessage,
    WhatsAppSender,
    WhatsAppSessionStatus,
    WhatsAppTemplate,
    _as_id,
    normalize_phone,
)

if TYPE_CHECKING:
    import httpx
    from airflow.providers.common.compat.sdk import Connection

log = logging.getLogger(__name__)

USER_AGENT = f"airflow-provider-famulor/{__version__}"
CONNECT_TIMEOUT = 10.0
MAX_RETRY_AFTER = 60.0  # never sleep longer than this on one Retry-After
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 30.0

T = TypeVar("T")


@dataclass(frozen=True)
class FamulorConnectionConfig:
    """The settings of a Famulor connection, resolved and checked."""

    conn_id: str
    base_url: str
    api_key: str = field(repr=False)
    read_timeout: float
    max_retries: int
    verify_ssl: bool

    @property
    def timeout(self) -> tuple[float, float]:
        """(connect, read) timeout in seconds."""
        return (min(CONNECT_TIMEOUT, self.read_timeout), self.read_timeout)

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.api_key}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }

    def scrub(self, text: str) -> str:
        """Remove the API key from a text that may echo it (defence in depth)."""
        return text.replace(self.api_key, "***") if self.api_key else text


def _extra(conn: Connection, name: str) -> Any:
    extra = conn.extra_dejson
    value = extra.get(name, extra.get(f"extra__famulor__{name}"))
    return None if value in ("", None) else value


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "y", "on"):  # "y": Airflow 2.11's form sends a ticked box so
        return True
    if text in ("false", "0", "no", "n", "off"):
        return False
    raise FamulorValidationError(name, f"expected true or false, got {value!r}")


def _as_number(value: Any, name: str, kind: Callable[[Any], T]) -> T:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise FamulorValidationError(name, f"expected a number, got {value!r}") from None
    if number < 0:  # type: ignore[operator]
        raise FamulorValidationError(name, f"must not be negative, got {value!r}")
    return number


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _base_url(conn: Connection) -> str:
    host = (conn.host or "").strip().rstrip("/")
    if not host:
        return DEFAULT_BASE_URL
    if "://" not in host:  # URI form: famulor://:KEY@app.famulor.de/api -> host + schema
        port = f":{conn.port}" if conn.port else ""
        path = f"/{conn.schema.strip('/')}" if conn.schema else ""
        host = f"https://{host}{port}{path}"
    parts = urlsplit(host)
    hostname = parts.hostname or ""
    if parts.scheme == "http" and not _is_loopback(hostname):
        raise FamulorValidationError(
            f"Base URL of connection {conn.conn_id!r}",
            f"{host} is plain http; the API key is only sent over https (http only to a loopback address)",
        )
    if parts.scheme not in ("http", "https") or not hostname:
        raise FamulorValidationError(
            f"Base URL of connection {conn.conn_id!r}", f"{host!r} is not an http(s) URL"
        )
    return host


def connection_config(
    conn: Connection, *, timeout: float | None = None, max_retries: int | None = None
) -> FamulorConnectionConfig:
    """Resolve a Famulor connection; hook arguments override the connection's extras."""
    api_key = (conn.password or "").strip()
    if not api_key:
        raise FamulorValidationError(
            "API key",
            f"connection {conn.conn_id!r} has no API key: put the Famulor API key in its "
            "password field ('API Key')",
        )
    mask_secret(api_key)
    if timeout is None:
        timeout = _extra(conn, "timeout")
    if max_retries is None:
        max_retries = _extra(conn, "max_retries")
    verify_ssl = _extra(conn, "verify_ssl")
    read_timeout = DEFAULT_TIMEOUT if timeout is None else _as_number(timeout, "timeout", float)
    if read_timeout == 0:
        raise FamulorValidationError("timeout", "must be more than 0 seconds")
    return FamulorConnectionConfig(
        conn_id=conn.conn_id,
        base_url=_base_url(conn),
        api_key=api_key,
        read_timeout=read_timeout,
        max_retries=DEFAULT_MAX_RETRIES
        if max_retries is None
        else _as_number(max_retries, "max_retries", int),
        verify_ssl=True if verify_ssl is None else _as_bool(verify_ssl, "verify_ssl"),
    )


# ---------------------------------------------------------------------------------------------
# Responses and errors: shared by the sync and the async path.


def _retry_after_seconds(headers: Mapping[str, str], body: Any) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date) or a body ``retry_after``."""
    value = headers.get("Retry-After") or headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                when = None
            if when is not None:
                return max(0.0, when.timestamp() - time.time())
    if isinstance(body, Mapping):
        retry_after = body.get("retry_after")
        if isinstance(retry_after, (int, float)) and not isinstance(retry_after, bool):
            return max(0.0, float(retry_after))
    return None


def _error_detail(body: Any) -> tuple[str, str | None]:
    """One readable message and the ``error_code`` from any of the API's error body shapes."""
    if not isinstance(body, Mapping):
        return "", None
    parts: list[str] = []
    for key in ("error", "message"):
        value = body.get(key)
        if isinstance(value, str) and value and value not in parts:
            parts.append(value)
    errors = body.get("errors")
    if isinstance(errors, Mapping):
        for name, messages in errors.items():
            texts = messages if isinstance(messages, list) else [messages]
            parts.append(f"{name}: {'; '.join(str(t) for t in texts)}")
    code = body.get("error_code")
    return " - ".join(parts), code if isinstance(code, str) and code else None


def _load_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


# The API's error codes that have their own error class. The code decides, not the status:
# SENDER_OFFLINE is a 422 on /send and a 503 on /send-freeform.
ERROR_CODE_ERRORS: dict[str, type[FamulorAPIError]] = {
    "SENDER_OFFLINE": FamulorSenderOfflineError,
    "INSUFFICIENT_BALANCE": FamulorInsufficientBalanceError,
    "SESSION_EXPIRED": FamulorSessionExpiredError,
    "TEMPLATE_NOT_FOUND": FamulorTemplateError,
    "TEMPLATE_NOT_APPROVED": FamulorTemplateError,
    "TEMPLATE_NOT_SYNCED": FamulorTemplateError,
    "TEMPLATE_MISMATCH": FamulorTemplateError,
    "INVALID_PHONE": FamulorInvalidPhoneError,
}


def error_for_status(
    endpoint: str, status: int, headers: Mapping[str, str], body: bytes, config: FamulorConnectionConfig
) -> FamulorError:
    """Map an HTTP error answer to the typed error; the message never holds the API key."""
    payload = _load_json(body)
    detail, code = _error_detail(payload)
    message = f"{endpoint} failed with HTTP {status}"
    if code:
        message += f" [{code}]"
    message += f": {detail}" if detail else " (no JSON error body)"
    error_class = ERROR_CODE_ERRORS.get(code or "")
    if error_class is None and status == 402:
        error_class = FamulorInsufficientBalanceError
    if error_class is not None:
        return error_class(config.scrub(message), status_code=status, error_code=code)
    if status in (401, 403):
        hint = (
            "the API key is invalid or expired"
            if status == 401
            else "the API key lacks permission for this endpoint"
        )
        message = message.rstrip(".") + (
            f". Check the API key of connection {config.conn_id!r}: {hint} "
            "(Famulor Classic keys only; Platform 2.0 'fam_' keys do not work here)"
        )
        return FamulorAuthError(config.scrub(message), status_code=status, error_code=code)
    if status == 429:
        retry_after = _retry_after_seconds(headers, payload)
        if retry_after is not None:
            message += f" (retry after {retry_after:.0f} s)"
        return FamulorRateLimitError(config.scrub(message), error_code=code, retry_after=retry_after)
    if 300 <= status < 400:
        message = (
            f"{endpoint} was redirected (HTTP {status}); the Base URL {config.base_url} "
            "does not look like the Famulor API (e.g. https://app.famulor.de/api)"
        )
    return FamulorAPIError(config.scrub(message), status_code=status, error_code=code)


def parse_response(
    endpoint: str, status: int, headers: Mapping[str, str], body: bytes, config: FamulorConnectionConfig
) -> Any:
    """Return the JSON of a 2xx answer, or raise the typed error for anything else."""
    if not 200 <= status < 300:
        raise error_for_status(endpoint, status, headers, body, config)
    payload = _load_json(body)
    if payload is None:
        content_type = headers.get("Content-Type") or headers.get("content-type") or ""
        kind = "HTML" if "html" in content_type or body.lstrip()[:1] == b"<" else "a body that is not JSON"
        raise FamulorResponseError(
            f"{endpoint} answered HTTP {status} with {kind}; check that the Base URL of connection "
            f"{config.conn_id!r} ({config.base_url}) is the Famulor API, e.g. {DEFAULT_BASE_URL}"
        )
    return payload


def data_list(endpoint: str, payload: Any) -> list[Any]:
    """The ``data`` list of a listing answer."""
    data = payload.get("data") if isinstance(payload, Mapping) else None
    if not isinstance(data, list):
        raise FamulorResponseError(f"{endpoint} answered without a 'data' list")
    return data


# ---------------------------------------------------------------------------------------------
# Retry policy: shared by the sync and the async path.


def is_retryable_read(error: BaseException) -> bool:
    """A read (GET) is retried on connection errors, timeouts, 408, 429 and 5xx."""
    if isinstance(error, FamulorConnectionError | FamulorRateLimitError):
        return True
    return (
        isinstance(error, FamulorAPIError)
        and not isinstance(error, FamulorAuthError)
        and (error.status_code >= 500 or error.status_code == 408)
    )


def is_retryable_send(error: BaseException) -> bool:
    """A send is retried only where the API cannot have accepted it: 429, or never connected."""
    if isinstance(error, FamulorRateLimitError):
        return True
    return isinstance(error, FamulorConnectionError) and not error.request_sent


_backoff = tenacity.wait_exponential_jitter(initial=BACKOFF_INITIAL, max=BACKOFF_MAX, jitter=BACKOFF_INITIAL)


def retry_wait(retry_state: tenacity.RetryCallState) -> float:
    """Honour the API's Retry-After (capped); otherwise exponential backoff with jitter."""
    error = retry_state.outcome.exception() if retry_state.outcome else None
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        return float(min(retry_after, MAX_RETRY_AFTER))
    return float(_backoff(retry_state))


def _log_retry(retry_state: tenacity.RetryCallState) -> None:
    error = retry_state.outcome.exception() if retry_state.outcome else None
    wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
    log.warning("%s; retry %d in %.1f s", error, retry_state.attempt_number, wait)


def retry_policy(
    max_retries: int, retryable: Callable[[BaseException], bool], sleep: Callable[[float], Any]
) -> dict[str, Any]:
    """Keyword arguments for ``tenacity.Retrying`` / ``AsyncRetrying``: at most ``max_retries + 1`` tries."""
    return {
        "stop": tenacity.stop_after_attempt(max_retries + 1),
        "retry": tenacity.retry_if_exception(retryable),
        "wait": retry_wait,
        "sleep": sleep,
        "before_sleep": _log_retry,
        "reraise": True,
    }


def may_have_sent(error: BaseException) -> bool:
    """Whether a failed send may still have been accepted (and billed) by the API.

    True when the request went out and no answer says it was refused: a read timeout, a
    connection broken after sending, a 5xx without a documented error code, or a success
    answer that cannot be read. A 4xx (or a mapped error code) is a refusal: nothing was sent.
    """
    if isinstance(error, FamulorConnectionError):
        return error.request_sent
    if isinstance(error, FamulorResponseError):
        return True
    return type(error) is FamulorAPIError and error.status_code >= 500


# ---------------------------------------------------------------------------------------------
# Sends: input checks and pacing.

SEND_RATE_PER_SECOND = 5  # the API's documented limit for sends, per user
SEND_INTERVAL = 1.05 / SEND_RATE_PER_SECOND  # 5 % slack for network jitter: a 429 costs far more
E164_PHONE = re.compile(r"^\+[1-9]\d{6,14}$")
MAX_MESSAGE_CHARS = 4096
MAX_RECIPIENT_NAME_CHARS = 255


class SendPacer:
    """
    Spaces sends at least ``interval`` seconds apart per key (connection id), across threads.

    Each caller reserves the next free slot under a lock, then sleeps outside it, so waiting
    callers never block one another's bookkeeping.

    :param interval: the minimum gap between two sends with the same key, in seconds.
    :param clock: a monotonic clock (injectable for tests).
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._next_slot: dict[str, float] = {}

    def wait(self, key: str, sleep: Callable[[float], Any] = time.sleep) -> None:
        """Take the next send slot of ``key``; sleep until it comes.

        :param key: what the limit is shared by (the connection id).
        :param sleep: the sleeper.
        """
        with self._lock:
            now = self.clock()
            slot = max(now, self._next_slot.get(key, now))
            self._next_slot[key] = slot + self.interval
        if slot > now:
            sleep(slot - now)


# Shared by every hook, task and thread of the process.
SEND_PACER = SendPacer(SEND_INTERVAL)


def check_id(value: Any, name: str) -> int:
    """A positive integer id (digit strings, as templates render them, are accepted).

    :param value: the value to check.
    :param name: the argument's name, for the error.
    """
    return _as_id(value, name)


def check_phone(value: Any, name: str = "recipient_phone") -> str:
    """An E.164 phone number; spaces, dots, dashes and parentheses are dropped first.

    :param value: the value to check.
    :param name: the argument's name, for the error.
    """
    phone = normalize_phone(value.strip()) if isinstance(value, str) else None
    if phone is None or not E164_PHONE.match(phone):
        raise FamulorValidationError(
            name, f"expected an E.164 phone number such as +14155551234, got {value!r}"
        )
    return phone


def check_text(value: Any, name: str, max_chars: int, *, required: bool) -> str:
    """A string of at most ``max_chars`` characters; ``None`` or empty is ``""`` unless ``required``.

    :param value: the value to check.
    :param name: the argument's name, for the error.
    :param max_chars: the most characters allowed.
    :param required: whether an empty value is an error.
    """
    if value is None or value == "":
        if required:
            raise FamulorValidationError(name, "must not be empty")
        return ""
    if not isinstance(value, str):
        raise FamulorValidationError(name, f"expected a string, got {type(value).__name__}")
    if len(value) > max_chars:
        raise FamulorValidationError(name, f"has {len(value)} characters; at most {max_chars} are allowed")
    return value


def check_variables(value: Any, name: str = "variables") -> dict[str, Any] | None:
    """Template variables: a mapping such as ``{"1": "A-1234"}`` or ``{"name": "Ann"}``.

    :param value: the value to check.
    :param name: the argument's name, for the error.
    """
    if value is None or value == {}:
        return None
    if not isinstance(value, Mapping):
        raise FamulorValidationError(
            name, f'expected a mapping such as {{"1": "A-1234"}}, got {type(value).__name__}'
        )
    for key, item in value.items():
        if not isinstance(item, str | int | float) or isinstance(item, bool):
            raise FamulorValidationError(name, f"the value of {key!r} must be text or a number")
    return {str(key): item for key, item in value.items()}


# ---------------------------------------------------------------------------------------------


class FamulorHook(BaseHook):
    """
    Interact with the Famulor Classic API (``https://app.famulor.de/api`` or a white-label host).

    The API key is the connection's password; the base URL its host. Reads retry on
    429, 5xx, timeouts and connection errors, honouring ``Retry-After``.

    :param famulor_conn_id: the Famulor connection.
    :param timeout: read timeout in seconds (default: the connection's ``timeout`` extra, else 30).
    :param max_retries: retries of a read (default: the connection's ``max_retries`` extra, else 5).
    """

    conn_type = "famulor"
    conn_name_attr = "famulor_conn_id"
    default_conn_name = "famulor_default"
    hook_name = "Famulor"

    # Injectable for tests: the sleepers used between retries.
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
        conn = self.get_connection(self.famulor_conn_id)
        return connection_config(conn, timeout=self.timeout, max_retries=self.max_retries)

    async def aget_config(self) -> FamulorConnectionConfig:
        """The resolved connection, loaded without blocking the event loop."""
        if "config" not in self.__dict__:
            aget_connection = getattr(self, "aget_connection", None)
            if aget_connection is not None:  # Airflow 3
                conn = await aget_connection(self.famulor_conn_id)
            else:  # Airflow 2.11 has no async connection lookup
                conn = await asyncio.to_thread(self.get_connection, self.famulor_conn_id)
            self.__dict__["config"] = connection_config(
                conn, timeout=self.timeout, max_retries=self.max_retries
            )
        return self.config

    @cached_property
    def session(self) -> requests.Session:
        """One keep-alive session per hook, carrying the auth and identity headers."""
        session = requests.Session()
        session.headers.update(self.config.headers)
        return session

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
        """Send one API request with the retry policy; return the JSON answer.

        :param before_attempt: called before every attempt (sends use it to pace themselves).
        """
        config = self.config
        endpoint = f"{method} {path}"

        def attempt() -> Any:
            if before_attempt is not None:
                before_attempt()
            try:
                response = self.session.request(
                    method,
                    config.base_url + path,
                    params=params,
                    json=json_body,
                    timeout=config.timeout,
                    # Per request: a session-level False loses to REQUESTS_CA_BUNDLE in requests.
                    verify=config.verify_ssl,
                    allow_redirects=False,
                )
            except requests.RequestException as err:
                raise _requests_error(endpoint, err, config) from err
            return parse_response(endpoint, response.status_code, response.headers, response.content, config)

        retries = config.max_retries if max_retries is None else max_retries
        return tenacity.Retrying(**retry_policy(retries, retryable, self.sleep))(attempt)

    async def arequest(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Mapping[str, Any] | None = None,
        retryable: Callable[[BaseException], bool] = is_retryable_read,
    ) -> Any:
        """Async twin of :meth:`request` (httpx), for triggers."""
        import httpx

        config = await self.aget_config()
        endpoint = f"{method} {path}"
        async with httpx.AsyncClient(
            headers=config.headers,
            timeout=httpx.Timeout(config.read_timeout, connect=config.timeout[0]),
            verify=config.verify_ssl,
            follow_redirects=False,
        ) as client:

            async def attempt() -> Any:
                try:
                    response = await client.request(
                        method, config.base_url + path, params=params, json=json_body
                    )
                except httpx.HTTPError as err:
                    raise _httpx_error(endpoint, err, config) from err
                return parse_response(
                    endpoint, response.status_code, response.headers, response.content, config
                )

            policy = retry_policy(config.max_retries, retryable, self.async_sleep)
            return await tenacity.AsyncRetrying(**policy)(attempt)

    # -- API -------------------------------------------------------------------------------------

    def list_whatsapp_senders(self, status: str = "online") -> list[WhatsAppSender]:
        """
        List the account's WhatsApp senders (``GET /user/whatsapp/senders``).

        :param status: ``online`` (the API's default), ``offline``, or ``all`` for every sender.
        """
        path = "/user/whatsapp/senders"
        payload = self.request("GET", path, params={"status": _status_param(status)})
        return [WhatsAppSender.from_api(item) for item in data_list(f"GET {path}", payload)]

    async def alist_whatsapp_senders(self, status: str = "online") -> list[WhatsAppSender]:
        """Async twin of :meth:`list_whatsapp_senders`."""
        path = "/user/whatsapp/senders"
        payload = await self.arequest("GET", path, params={"status": _status_param(status)})
        return [WhatsAppSender.from_api(item) for item in data_list(f"GET {path}", payload)]

    def list_whatsapp_templates(self, sender_id: int, status: str = "approved") -> list[WhatsAppTemplate]:
        """
        List a sender's message templates (``GET /user/whatsapp/senders/{sender_id}/templates``).

        :param sender_id: the sender.
        :param status: ``approved`` (the API's default) or ``all``.
        """
        sender_id = check_id(sender_id, "sender_id")
        status = check_text(status, "status", 32, required=True).lower()
        path = f"/user/whatsapp/senders/{sender_id}/templates"
        payload = self.request("GET", path, params={"status": status})
        return [WhatsAppTemplate.from_api(item) for item in data_list(f"GET {path}", payload)]

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

        Retried only where the API cannot have accepted it (429, never connected). When the
        outcome is unknown, raises ``FamulorDeliveryUnknownError`` and never retries.

        :param sender_id: the sender.
        :param template_id: the approved template.
        :param recipient_phone: the recipient (E.164).
        :param variables: the template's variables, e.g. ``{"1": "A-1234"}``.
        :param recipient_name: the recipient's name (at most 255 characters).
        """
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
        return self._send("/user/whatsapp/send", body)

    def send_whatsapp_freeform(self, sender_id: int, recipient_phone: str, message: str) -> WhatsAppMessage:
        """
        Send a free-form text inside an open 24-hour window (``POST /user/whatsapp/send-freeform``).

        Same retry rule as :meth:`send_whatsapp_template`; an expired window raises
        ``FamulorSessionExpiredError``.

        :param sender_id: the sender.
        :param recipient_phone: the recipient (E.164).
        :param message: the text (at most 4096 characters).
        """
        body = {
            "sender_id": check_id(sender_id, "sender_id"),
            "recipient_phone": check_phone(recipient_phone),
            "message": check_text(message, "message", MAX_MESSAGE_CHARS, required=True),
        }
        return self._send("/user/whatsapp/send-freeform", body)

    def _send(self, path: str, body: dict[str, Any]) -> WhatsAppMessage:
        """POST one checked send: paced, retried only if nothing can have been sent."""
        sender_id, phone = body["sender_id"], body["recipient_phone"]
        attempted_at: list[datetime] = []

        def before_attempt() -> None:
            self.send_pacer.wait(self.famulor_conn_id, self.sleep)
            attempted_at.append(datetime.now(timezone.utc))

        self.session  # noqa: B018  (built before taking a send slot, so the slot is not spent on set-up)
        what = f"template {body['template_id']}" if "template_id" in body else "free-form message"
        log.info("Sending WhatsApp %s from sender %s to %s", what, sender_id, phone)
        try:
            payload = self.request(
                "POST", path, json_body=body, retryable=is_retryable_send, before_attempt=before_attempt
            )
        except FamulorError as err:
            if attempted_at and may_have_sent(err):
                raise self._delivery_unknown(path, body, attempted_at[-1], err) from err
            raise
        if not isinstance(payload, Mapping) or payload.get("success") is False:
            cause = FamulorResponseError(f"POST {path} answered 2xx without success: true")
            raise self._delivery_unknown(path, body, attempted_at[-1], cause) from cause
        message = WhatsAppMessage.from_api(
            payload, sender_id=sender_id, recipient_phone=phone, template_id=body.get("template_id")
        )
        log.info("WhatsApp message %s to %s accepted (%s)", message.message_id, phone, message.status)
        return message

    def _delivery_unknown(
        self, path: str, body: Mapping[str, Any], attempted_at: datetime, cause: FamulorError
    ) -> FamulorDeliveryUnknownError:
        when = attempted_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        text = (
            f"Delivery unknown: the WhatsApp message from sender {body['sender_id']} to "
            f"{body['recipient_phone']} (POST {path} at {when}) may have been sent and billed. "
            "It was not retried, so the recipient cannot get it twice. Before sending again, check "
            f"in Famulor whether sender {body['sender_id']} messaged {body['recipient_phone']} "
            f"around {when}. Cause: {cause}"
        )
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


def _status_param(status: str) -> str:
    if not isinstance(status, str) or not status.strip():
        raise FamulorValidationError("status", f"expected 'online', 'offline' or 'all', got {status!r}")
    return status.strip().lower()


def _requests_error(
    endpoint: str, err: requests.RequestException, config: FamulorConnectionConfig
) -> FamulorError:
    """Map a ``requests`` transport error; ``request_sent`` is False only if no connection was made."""
    import urllib3.exceptions

    where = f"{endpoint} to {config.base_url}"
    if isinstance(err, requests.ConnectTimeout):
        return FamulorTimeoutError(f"{where}: no connection within {config.timeout[0]} s", request_sent=False)
    if isinstance(err, requests.Timeout):
        return FamulorTimeoutError(f"{where}: no answer within {config.read_timeout} s")
    reason = getattr(err.args[0], "reason", None) if err.args else None
    never_connected = isinstance(reason, urllib3.exceptions.NewConnectionError)
    if isinstance(err, requests.exceptions.SSLError):
        never_connected = True
    text = "could not connect" if never_connected else "the connection broke before an answer"
    return FamulorConnectionError(
        config.scrub(f"{where}: {text} ({type(err).__name__})"), request_sent=not never_connected
    )


def _httpx_error(endpoint: str, err: httpx.HTTPError, config: FamulorConnectionConfig) -> FamulorError:
    """Map an ``httpx`` transport error the same way as :func:`_requests_error`."""
    import httpx

    where = f"{endpoint} to {config.base_url}"
    if isinstance(err, httpx.ConnectTimeout | httpx.PoolTimeout):
        return FamulorTimeoutError(f"{where}: no connection within {config.timeout[0]} s", request_sent=False)
    if isinstance(err, httpx.TimeoutException):
        return FamulorTimeoutError(f"{where}: no answer within {config.read_timeout} s")
    never_connected = isinstance(err, httpx.ConnectError)
    text = "could not connect" if never_connected else "the connection broke before an answer"
    return FamulorConnectionError(
        config.scrub(f"{where}: {text} ({type(err).__name__})"), request_sent=not never_connected
    )
