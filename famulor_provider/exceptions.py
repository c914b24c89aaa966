"""Typed errors raised by the Famulor provider. Every one is an ``AirflowException``."""

from __future__ import annotations

from airflow.providers.common.compat.sdk import AirflowException


class FamulorError(AirflowException):
    """Base class of every error the Famulor provider raises."""


class FamulorValidationError(FamulorError, ValueError):
    """An argument is invalid; raised before any request is sent.

    :param field: the argument or field that is wrong.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"Invalid {field}: {message}")
        self.field = field


class FamulorConnectionError(FamulorError):
    """The API could not be reached, or the connection broke, after the retries.

    :param request_sent: whether the request may have reached the server (False only when
        the connection was never established).
    """

    def __init__(self, message: str, *, request_sent: bool = True) -> None:
        super().__init__(message)
        self.request_sent = request_sent


class FamulorTimeoutError(FamulorConnectionError):
    """The API did not answer in time."""


class FamulorAPIError(FamulorError):
    """The API answered with an HTTP error.

    :param status_code: the HTTP status.
    :param error_code: the API's ``error_code`` (e.g. ``SENDER_NOT_FOUND``), when it gave one.
    """

    def __init__(self, message: str, *, status_code: int, error_code: str | None = None) -> None:
        super().__init__(message)
        # AirflowException types this attribute as HTTPStatus; the API may send any integer.
        self.status_code = status_code  # type: ignore[assignment]
        self.error_code = error_code


class FamulorAuthError(FamulorAPIError):
    """The API key is missing, invalid or expired (401), or lacks permission (403)."""


class FamulorRateLimitError(FamulorAPIError):
    """429 Too Many Requests, still there after the retries.

    :param retry_after: seconds the API asked to wait, when it said.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 429,
        error_code: str | None = None,
        retry_after: float | None,
    ) -> None:
        super().__init__(message, status_code=status_code, error_code=error_code)
        self.retry_after = retry_after


class FamulorResponseError(FamulorError):
    """A 2xx answer that is not the documented shape (HTML, invalid JSON, no ``data`` list, ...)."""
