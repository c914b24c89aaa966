"""The settings of a Famulor connection, resolved and checked: base URL, key, timeouts, TLS."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from famulor_provider import __version__
from famulor_provider.exceptions import FamulorValidationError
from famulor_provider.get_provider_info import (
    DEFAULT_BASE_URL,
    DEFAULT_MAX_RETRIES,
    DEFAULT_POLL_REQUESTS_PER_MINUTE,
    DEFAULT_TIMEOUT,
)
from famulor_provider.validation import check_flag

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow.providers.common.compat.sdk import Connection

USER_AGENT = f"airflow-provider-famulor/{__version__}"
CONNECT_TIMEOUT = 10.0

T = TypeVar("T")


@dataclass(frozen=True)
class FamulorConnectionConfig:
    """The settings of a Famulor connection, resolved and checked.

    ``deadline`` (the connection's ``timeout``) bounds one whole attempt, from connecting to the
    last byte of the answer; connecting alone is bounded by ``min(10, timeout)``.
    """

    conn_id: str
    base_url: str
    api_key: str = field(repr=False)
    deadline: float
    max_retries: int
    verify_ssl: bool
    poll_requests_per_minute: float = DEFAULT_POLL_REQUESTS_PER_MINUTE

    @property
    def connect_timeout(self) -> float:
        return min(CONNECT_TIMEOUT, self.deadline)

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


def _as_number(value: Any, name: str, kind: Callable[[Any], T]) -> T:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise FamulorValidationError(name, f"expected a number, got {value!r}") from None
    if number < 0:  # type: ignore[operator]
        raise FamulorValidationError(name, f"must not be negative, got {value!r}")
    return number


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address."""
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
    if parts.scheme == "http" and not is_loopback(hostname):
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
    from airflow.providers.common.compat.sdk import mask_secret

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
    poll_rate = _extra(conn, "poll_requests_per_minute")
    poll_rate = (
        DEFAULT_POLL_REQUESTS_PER_MINUTE
        if poll_rate is None
        else _as_number(poll_rate, "poll_requests_per_minute", float)
    )
    if poll_rate == 0:
        raise FamulorValidationError("poll_requests_per_minute", "must be more than 0 (the default is 50)")
    deadline = DEFAULT_TIMEOUT if timeout is None else _as_number(timeout, "timeout", float)
    if deadline == 0:
        raise FamulorValidationError("timeout", "must be more than 0 seconds")
    return FamulorConnectionConfig(
        conn_id=conn.conn_id,
        base_url=_base_url(conn),
        api_key=api_key,
        deadline=deadline,
        max_retries=DEFAULT_MAX_RETRIES
        if max_retries is None
        else _as_number(max_retries, "max_retries", int),
        verify_ssl=True if verify_ssl is None else check_flag(verify_ssl, "verify_ssl"),
        poll_requests_per_minute=poll_rate,
    )
