"""Typed errors raised by the Famulor provider. Every one is an ``AirflowException``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime


class FamulorError(AirflowException):
    """Base class of every error the Famulor provider raises."""


class FamulorValidationError(FamulorError, ValueError):
    """An argument is invalid; raised before any request is sent.

    :param field: the argument or field that is wrong.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"Invalid {field}: {message}")
        self.field = field


class FamulorSenderNotFoundError(FamulorValidationError):
    """A wanted ``sender_id`` or ``phone_number`` is not a sender of the account at all (a typo)."""


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


class FamulorConversationNotFoundError(FamulorAPIError):
    """404 on ``GET /conversations/{uuid}``: no conversation has that id (in this account)."""


class FamulorResponseError(FamulorError):
    """A 2xx answer that is not the documented shape (HTML, invalid JSON, no ``data`` list, ...)."""


# -- sends (WhatsApp messages) -------------------------------------------------------------------


class FamulorDeliveryUnknownError(FamulorError):
    """A send whose outcome is unknown: the message may have been sent (and billed).

    Raised for a read timeout, a connection that broke after the request went out, a 5xx
    without a documented error code, or a success answer that cannot be read. Never retried.

    :param sender_id: the sender the message was sent from.
    :param recipient_phone: the recipient's phone number (E.164).
    :param attempted_at: when the last attempt was made (UTC).
    :param status_code: the HTTP status, when the API answered.
    :param error_code: the API's ``error_code``, when it gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        sender_id: int,
        recipient_phone: str,
        attempted_at: datetime,
        status_code: int | None = None,
        error_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.sender_id = sender_id
        self.recipient_phone = recipient_phone
        self.attempted_at = attempted_at
        # AirflowException types this attribute as HTTPStatus; the API may send any integer.
        self.status_code = status_code  # type: ignore[assignment]
        self.error_code = error_code


class FamulorSenderOfflineError(FamulorAPIError):
    """``SENDER_OFFLINE``: the sender cannot send right now; nothing was sent."""


class FamulorInsufficientBalanceError(FamulorAPIError):
    """``INSUFFICIENT_BALANCE`` (402): the account cannot pay for the message; nothing was sent."""


class FamulorSessionExpiredError(FamulorAPIError):
    """``SESSION_EXPIRED`` (403): no open 24-hour window for a free-form message; nothing was sent."""


class FamulorTemplateError(FamulorAPIError):
    """``TEMPLATE_NOT_FOUND``, ``TEMPLATE_NOT_APPROVED``, ``TEMPLATE_NOT_SYNCED`` or
    ``TEMPLATE_MISMATCH``: the template cannot be sent; nothing was sent."""


class FamulorInvalidPhoneError(FamulorAPIError):
    """``INVALID_PHONE``: the API rejected the recipient's number; nothing was sent."""


# -- campaigns -----------------------------------------------------------------------------------


class FamulorLedgerMissingError(FamulorError):
    """A later try of a campaign found no send ledger where an earlier try must have written one.

    Sending without it could send a message twice, so nothing is sent: the ledger's folder must be
    on storage every worker sees.
    """


class FamulorLedgerConflictError(FamulorError):
    """Another process wrote to a campaign's ledger while this try held it (a lock that does not
    hold across hosts): this try sends nothing more; a later try resumes from the ledger."""


# -- delivery receipts ---------------------------------------------------------------------------


class FamulorDeliveryFailedError(FamulorError, AirflowFailException):
    """A message sent earlier was reported ``failed`` or ``undelivered`` by its delivery receipt.

    Never retried: the receipt is final, a retry would read the same one.

    :param whatsapp_message_id: the message (the id its send answered).
    :param status: ``failed`` or ``undelivered``.
    :param error_code: the provider's error code (e.g. ``63016``), when given.
    :param error_description: the provider's description (or its ``error_message``), when given.
    :param recipient: the recipient's number, masked.
    :param failed: how many of the awaited messages had failed when this was raised.
    """

    def __init__(
        self,
        message: str,
        *,
        whatsapp_message_id: Any,
        status: str,
        error_code: Any = None,
        error_description: str | None = None,
        recipient: str | None = None,
        failed: int = 1,
    ) -> None:
        super().__init__(message)
        self.whatsapp_message_id = whatsapp_message_id
        self.status = status
        self.error_code = error_code
        self.error_description = error_description
        self.recipient = recipient
        self.failed = failed


# -- errors carried in trigger events --------------------------------------------------------------

EVENT_FIELDS = ("status_code", "error_code", "field", "request_sent")


def error_event(error: BaseException) -> dict[str, Any]:
    """A failed trigger's terminal event payload: the typed error's name, message and fields."""
    payload: dict[str, Any] = {"status": "error", "error_type": type(error).__name__, "message": str(error)}
    if isinstance(error, FamulorError):
        # Instance attributes only: AirflowException has a class-level ``status_code`` default.
        payload.update({name: error.__dict__[name] for name in EVENT_FIELDS if name in error.__dict__})
    return payload


def error_from_event(event: Mapping[str, Any]) -> FamulorError:
    """Rebuild the typed error of an :func:`error_event` payload, for ``execute_complete`` to raise."""
    error_type = str(event.get("error_type") or "FamulorError")
    message = str(event.get("message") or "the trigger failed without a message")
    cls = globals().get(error_type)
    if not (isinstance(cls, type) and issubclass(cls, FamulorError)):
        return FamulorError(f"{error_type}: {message}")
    # The error classes take different constructor arguments; the message is already complete,
    # so build the instance without __init__ and restore its fields.
    error = cls.__new__(cls, message)
    for name in EVENT_FIELDS:
        if name in event:
            setattr(error, name, event[name])
    return error
