"""How a request travels: deadlines, the rule for "may have been sent", error mapping, retries.

One rule (:func:`transport_error`) decides whether a failed request may have reached the API:
only a failure that proves the request was never written counts as not sent: DNS failure,
connection refused, connect timeout (by their error types, also towards a proxy), or a failure on
a connection the transport watched before writing began (a TLS handshake or certificate failure,
a proxy refusing or dropping the ``CONNECT``). Both transports report how far they got:
``requests`` through connection classes that note when writing begins (also in the pools of proxy
managers), ``httpx`` through its trace hook (a proxy's ``CONNECT`` is not our request). Without
such a report (a mocked transport), anything but a connect failure counts as "may have been sent".

The sync deadline is kept by one watchdog thread per process (:data:`WATCHDOG`), which cuts the
sockets an attempt still holds; a connection leaves its attempt when the pool takes it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import heapq
import itertools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import requests
import tenacity
import urllib3
from requests.adapters import HTTPAdapter

from famulor_provider.exceptions import (
    FamulorAPIError,
    FamulorAuthError,
    FamulorConnectionError,
    FamulorError,
    FamulorInsufficientBalanceError,
    FamulorInvalidPhoneError,
    FamulorRateLimitError,
    FamulorResponseError,
    FamulorSenderOfflineError,
    FamulorSessionExpiredError,
    FamulorTemplateError,
    FamulorTimeoutError,
)
from famulor_provider.get_provider_info import DEFAULT_BASE_URL
from famulor_provider.proxies import proxy_for

if TYPE_CHECKING:
    import httpx

    from famulor_provider.connection import FamulorConnectionConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_RETRY_AFTER = 60.0  # never sleep longer than this on one Retry-After
POOL_SIZE = 16  # keep-alive connections per host: the campaign sends from up to 16 threads
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 30.0


# ---------------------------------------------------------------------------------------------
# One attempt: its deadline, and whether the request began to be written.


class Attempt:
    """One try of one request: a total deadline, and how far it got.

    :param deadline: seconds the whole attempt may take, connecting included.
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.tracked = False  # the transport reported its progress for this attempt
        self.request_started = False  # the first byte of the request may have been written
        self.expired = False
        self.finished = False
        self._owned: list[tuple[object, socket.socket]] = []  # (connection, socket) it holds now
        self._lock = threading.Lock()

    def watch(self, connection: object, sock: socket.socket) -> bool:
        """Cut ``sock`` (of ``connection``) when the deadline passes; False if it already has
        (then ``sock`` is cut at once)."""
        with self._lock:
            self.tracked = True
            if self.expired:
                _shutdown(sock)
                return False
            if (connection, sock) not in self._owned:
                self._owned.append((connection, sock))
            return True

    def release(self, connection: object) -> None:
        """``connection`` goes back to the pool: the deadline no longer cuts its sockets (another
        attempt may take it at once)."""
        with self._lock:
            self._owned = [(c, s) for c, s in self._owned if c is not connection]

    def expire(self) -> None:
        """The deadline passed: cut the connections the attempt still holds, so a blocked read
        returns now. Under the lock, so a connection released meanwhile is never cut."""
        with self._lock:
            if self.finished:
                return
            self.expired = True
            for _, sock in self._owned:
                _shutdown(sock)

    def finish(self) -> None:
        with self._lock:
            self.finished = True
            self._owned = []


def _shutdown(sock: socket.socket) -> None:
    # socket.socket's own method: an SSLSocket's would drop its TLS state under a reader.
    with contextlib.suppress(OSError):  # already closed
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class Watchdog:
    """One daemon thread per process that expires sync attempts at their deadlines.

    A heap of (deadline, attempt); the thread sleeps on a condition until the earliest deadline,
    is woken only when a new attempt becomes the earliest, and drops finished attempts in a batch
    when it wakes. Started on first use; a forked child starts with an empty one
    (``os.register_at_fork``): the parent's thread and attempts do not exist there.
    """

    COMPACT_AT = 1024  # rebuild the heap without finished attempts past this size

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Attempt]] = []
        self._order = itertools.count()  # ties: never compare two attempts
        self._thread: threading.Thread | None = None
        self._compact_at = self.COMPACT_AT

    def add(self, attempt: Attempt) -> None:
        """Expire ``attempt`` ``attempt.deadline`` seconds from now, unless it finishes first."""
        entry = (time.monotonic() + attempt.deadline, next(self._order), attempt)
        with self._condition:
            heap = self._heap
            if len(heap) >= self._compact_at:  # finished attempts far from the top: drop them
                heap[:] = [e for e in heap if not e[2].finished]
                heapq.heapify(heap)
                self._compact_at = max(self.COMPACT_AT, 2 * len(heap))
            heapq.heappush(heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="famulor-watchdog", daemon=True)
                self._thread.start()
            elif heap[0] is entry:  # earlier than what the thread sleeps for
                self._condition.notify()

    def pending(self) -> int:
        """Attempts in the heap (finished ones not dropped yet included)."""
        with self._condition:
            return len(self._heap)

    def _run(self) -> None:
        condition, heap = self._condition, self._heap
        while True:
            with condition:
                while True:
                    while heap and heap[0][2].finished:
                        heapq.heappop(heap)
                    if not heap:
                        condition.wait()
                        continue
                    delay = heap[0][0] - time.monotonic()
                    if delay <= 0:
                        attempt = heapq.heappop(heap)[2]
                        break
                    condition.wait(delay)
            try:
                attempt.expire()
            except Exception:  # never let one attempt end the thread every deadline depends on
                log.exception("The deadline watchdog could not expire an attempt")


WATCHDOG = Watchdog()
os.register_at_fork(after_in_child=WATCHDOG._reset)

_current = threading.local()


def _current_attempt() -> Attempt | None:
    return getattr(_current, "attempt", None)


@contextmanager
def sync_attempt(deadline: float) -> Iterator[Attempt]:
    """Run one ``requests`` attempt in this thread under a total deadline (the :data:`WATCHDOG`)."""
    attempt = Attempt(deadline)
    _current.attempt = attempt
    WATCHDOG.add(attempt)
    try:
        yield attempt
    finally:
        attempt.finish()
        _current.attempt = None


class _DeadlineConnectionMixin:
    """Gives the socket to the thread's current attempt and notes when writing begins.

    The attempt holds the connection until the pool takes it back (:class:`_DeadlinePoolMixin`).
    """

    sock: socket.socket | None
    _attempt: Attempt | None = None  # the attempt that holds this connection now

    def _new_conn(self) -> socket.socket:
        attempt = _current_attempt()
        if attempt is not None:  # from here on, a failure before request() was never sent
            attempt.tracked = True  # (a refused or unreachable proxy, a refused CONNECT)
        sock = super()._new_conn()  # type: ignore[misc]
        if attempt is not None:
            self._attempt = attempt
            if not attempt.watch(self, sock):  # the deadline passed while resolving the name
                sock.close()
                raise urllib3.exceptions.ConnectTimeoutError(
                    self, f"the {attempt.deadline:g} s deadline passed before the connection was made"
                )
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self.sock is None:  # plain http connects inside request(): connect first, so a
            self.connect()  # type: ignore[attr-defined]  # refusal is told from a write failure
        attempt = _current_attempt()
        if attempt is not None:
            self._attempt = attempt
            if self.sock is not None and not attempt.watch(self, self.sock):
                raise urllib3.exceptions.ConnectTimeoutError(
                    self, f"the {attempt.deadline:g} s deadline passed before the request was written"
                )
            attempt.request_started = True
        super().request(*args, **kwargs)  # type: ignore[misc]


class _DeadlinePoolMixin:
    """Takes a connection back from its attempt before it goes back to the pool."""

    def _put_conn(self, conn: Any) -> None:
        attempt = getattr(conn, "_attempt", None)
        if attempt is not None:
            attempt.release(conn)
            conn._attempt = None
        super()._put_conn(conn)  # type: ignore[misc]


class _HTTPConnection(_DeadlineConnectionMixin, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_DeadlineConnectionMixin, urllib3.connection.HTTPSConnection):
    pass


class _HTTPConnectionPool(_DeadlinePoolMixin, urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSConnectionPool(_DeadlinePoolMixin, urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOL_CLASSES = {"http": _HTTPConnectionPool, "https": _HTTPSConnectionPool}


class DeadlineAdapter(HTTPAdapter):
    """A ``requests`` adapter whose connections obey :func:`sync_attempt` deadlines, direct or
    through an HTTP(S) proxy (``requests`` keeps a pool manager per proxy apart from its own)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOL_CLASSES

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> urllib3.PoolManager:
        manager: urllib3.PoolManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS managers bring their own pool classes
            manager.pool_classes_by_scheme = _POOL_CLASSES
        return manager


class _Session(requests.Session):
    """A session whose proxy for each URL is :func:`famulor_provider.proxies.proxy_for`'s, the
    async path's rule (a loopback URL never goes through a proxy)."""

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        # Explicit entries win over the environment's; None entries then drop out (direct).
        routes: Any = dict.fromkeys(("http", "https", "all"), proxy_for(url))
        return super().merge_environment_settings(url, routes, stream, verify, cert)


def new_session(headers: Mapping[str, str]) -> requests.Session:
    """A keep-alive ``requests`` session with deadline-aware connections and the given headers.

    Proxies come from the environment (``HTTPS_PROXY``, ``NO_PROXY``...) by the rule of
    :mod:`famulor_provider.proxies`, the async path's; a loopback URL is always reached directly.
    """
    session = _Session()
    adapter = DeadlineAdapter(pool_maxsize=POOL_SIZE)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update(headers)
    # An auth of its own keeps requests from putting a ~/.netrc login for the API's host in the
    # place of the Bearer header (it reads ~/.netrc for any session without auth).
    session.auth = _keep_bearer_header
    return session


def _keep_bearer_header(request: requests.PreparedRequest) -> requests.PreparedRequest:
    return request


def httpx_verify(verify_ssl: bool) -> Any:
    """What to pass as an httpx client's ``verify``: one TLS context per process and CA settings.

    httpx builds a new context for every client, loading the CA bundle each time (about 30 ms of
    CPU); the async hook opens a client per request, so a 100-page walk would spend seconds on it.
    """
    if not verify_ssl:
        return False
    return _tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=8)
def _tls_context(cert_file: str | None, cert_dir: str | None) -> Any:
    import httpx

    return httpx.create_ssl_context(verify=True, trust_env=True)  # reads SSL_CERT_FILE/_DIR


def httpx_mounts(base_url: str, verify: Any) -> dict[str, Any]:
    """httpx ``mounts`` for a client of ``base_url`` that reads no proxy from the environment
    (``trust_env=False``): direct, or through :func:`famulor_provider.proxies.proxy_for`'s proxy,
    the sync path's rule.

    :param base_url: the API's base URL (the client talks to no other host).
    :param verify: the client's ``verify`` (:func:`httpx_verify`), for the proxy's transport.
    """
    import httpx

    proxy = proxy_for(base_url)
    if proxy is None:
        return {"all://": None}  # the client's own transport: direct
    return {"all://": httpx.AsyncHTTPTransport(verify=verify, proxy=httpx.Proxy(proxy))}


def httpx_trace(attempt: Attempt) -> Callable[[str, Mapping[str, Any]], Awaitable[None]]:
    """An httpx ``trace`` extension that notes when the request begins to be written."""

    async def trace(event_name: str, info: Mapping[str, Any]) -> None:
        attempt.tracked = True
        if event_name.endswith(".send_request_headers.started"):
            request = info.get("request")
            # A proxy's CONNECT goes through the same trace: only our own request counts.
            if getattr(request, "method", None) != b"CONNECT":
                attempt.request_started = True

    return trace


def transport_error(
    endpoint: str,
    config: FamulorConnectionConfig,
    attempt: Attempt,
    cause: BaseException,
    *,
    timed_out: bool,
    connect_failure: bool,
) -> FamulorConnectionError:
    """The one rule for a failed attempt: "not sent" only when it is proven.

    :param endpoint: ``METHOD /path``, for the message.
    :param config: the connection (base URL, deadline; scrubs the key).
    :param attempt: how far the attempt got.
    :param timed_out: the transport reported a timeout (connect or read).
    :param connect_failure: the transport's error type proves no connection was made (DNS
        failure, connection refused, connect timeout).
    :param cause: the transport's error (its class name goes into the message).
    """
    where = f"{endpoint} to {config.base_url}"
    sent = not connect_failure and (attempt.request_started or not attempt.tracked)
    if attempt.expired:
        text = (
            f"no complete answer within the {config.deadline:g} s deadline"
            if sent
            else f"the {config.deadline:g} s deadline passed before anything was sent"
        )
    elif not sent:
        text = (
            f"no connection within {config.connect_timeout:g} s"
            if timed_out
            else "could not connect (nothing was sent)"
        )
    elif timed_out:
        text = f"no answer within {config.deadline:g} s after the request was sent"
    else:
        text = "the connection broke after the request may have been sent"
    error_class = FamulorTimeoutError if timed_out or attempt.expired else FamulorConnectionError
    return error_class(config.scrub(f"{where}: {text} ({type(cause).__name__})"), request_sent=sent)


def requests_error(
    endpoint: str, config: FamulorConnectionConfig, attempt: Attempt, err: requests.RequestException
) -> FamulorConnectionError:
    """:func:`transport_error` for a ``requests`` failure."""
    reason = getattr(err.args[0], "reason", None) if err.args else None
    if isinstance(reason, urllib3.exceptions.ProxyError):  # no connection to the proxy, or no tunnel
        reason = reason.original_error
    # NewConnectionError (also DNS failures) is a ConnectTimeoutError: no connection was made.
    connect_failure = isinstance(err, requests.ConnectTimeout) or isinstance(
        reason, urllib3.exceptions.ConnectTimeoutError
    )
    timed_out = isinstance(err, requests.Timeout) or (
        isinstance(reason, urllib3.exceptions.ConnectTimeoutError)
        and not isinstance(reason, urllib3.exceptions.NewConnectionError)
    )
    return transport_error(
        endpoint, config, attempt, err, timed_out=timed_out, connect_failure=connect_failure
    )


def httpx_error(
    endpoint: str, config: FamulorConnectionConfig, attempt: Attempt, err: BaseException
) -> FamulorConnectionError:
    """:func:`transport_error` for an ``httpx`` failure or an expired deadline."""
    import httpx

    connect_failure = isinstance(err, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    timed_out = isinstance(err, httpx.TimeoutException | asyncio.TimeoutError)
    return transport_error(
        endpoint, config, attempt, err, timed_out=timed_out, connect_failure=connect_failure
    )


# ---------------------------------------------------------------------------------------------
# Answers and errors.


def retry_after_seconds(headers: Mapping[str, str], body: Any) -> float | None:
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
        retry_after = retry_after_seconds(headers, payload)
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
    """A send is retried only where the API cannot have accepted it: 429, or never sent."""
    if isinstance(error, FamulorRateLimitError):
        return True
    return isinstance(error, FamulorConnectionError) and not error.request_sent


def may_have_sent(error: BaseException) -> bool:
    """Whether a failed send may still have been accepted (and billed) by the API.

    True when the request went out and no answer says it was refused: a deadline or read
    timeout, a connection broken after sending, a 5xx without a documented error code, a
    redirect (3xx: whatever answered may have processed the POST before redirecting it), or a
    success answer that cannot be read. A 4xx (or a mapped error code) is a refusal.
    """
    if isinstance(error, FamulorConnectionError):
        return error.request_sent
    if isinstance(error, FamulorResponseError):
        return True
    return type(error) is FamulorAPIError and (error.status_code >= 500 or 300 <= error.status_code < 400)


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


def retry_sync(
    attempt: Callable[[], T], retryable: Callable[[BaseException], bool], policy: Callable[[], dict[str, Any]]
) -> T:
    """Run ``attempt`` under the retry ``policy`` (:func:`retry_policy`), set up only once needed.

    The first try runs bare: most requests succeed, and a ``tenacity.Retrying`` costs more than
    the rest of the hook's own work per request. A retryable failure hands over to tenacity, whose
    first try raises that same error, so waits, logs and the count of tries are tenacity's.
    """
    try:
        return attempt()
    except Exception as err:
        if not retryable(err):
            raise
        first_error = err
    replayed = False

    def again() -> T:
        nonlocal replayed
        if not replayed:
            replayed = True
            raise first_error
        return attempt()

    return tenacity.Retrying(**policy())(again)


async def run_with_deadline(attempt: Attempt, request: Awaitable[httpx.Response]) -> httpx.Response:
    """Await an httpx request, cancelled when the attempt's deadline passes."""
    try:
        return await asyncio.wait_for(request, attempt.deadline)
    except asyncio.TimeoutError:
        attempt.expired = True
        raise
