"""Operators for Famulor's WhatsApp API."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowSkipException, BaseOperator

from famulor_provider.exceptions import FamulorError, FamulorValidationError
from famulor_provider.models import SenderCriteria, WhatsAppSender, order_by_capacity

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from airflow.providers.common.compat.sdk import Context

    from famulor_provider.hooks.famulor import FamulorHook

IF_EMPTY_CHOICES = ("succeed", "skip", "fail")
ORDER_BY_CHOICES = (None, "capacity")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise a ``FamulorValidationError``."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise FamulorValidationError(name, f"{value!r} is not one of {allowed}")
    return value


def sender_table(senders: Iterable[WhatsAppSender]) -> str:
    """A small fixed-width table of senders for the task log."""
    rows = [("id", "phone_number", "display_name", "status", "quality", "limit/24h")]
    rows += [
        (
            str(s.id),
            s.phone_number,
            s.display_name or "",
            s.status or "",
            s.quality_rating or "-",
            "unlimited" if s.messaging_limit is None else str(s.messaging_limit),
        )
        for s in senders
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


class ListWhatsAppSendersOperator(BaseOperator):
    """
    List the account's WhatsApp senders, filter and order them, and push them to XCom.

    Returns (XCom ``return_value``) a list of sender dicts with the API's fields, ready for
    dynamic task mapping (``send.expand(sender=list_senders.output)``), and pushes their ids
    under the XCom key ``sender_ids``.

    :param famulor_conn_id: the Famulor connection.
    :param status: ``online`` (default), ``offline`` or ``all``.
    :param quality_ratings: keep only these ratings (e.g. ``["GREEN", "YELLOW"]``; ``None`` in the
        list keeps senders that are not rated yet).
    :param min_messaging_limit: keep senders that can reach at least this many recipients per
        24 h; unlimited senders always pass.
    :param sender_ids: keep only these sender ids.
    :param phone_numbers: keep only these phone numbers (E.164).
    :param order_by: ``None`` keeps the API's order; ``"capacity"`` puts the best sender first
        (online, then GREEN > YELLOW > unrated > RED, then the larger limit).
    :param if_empty: what to do when no sender is left: ``succeed`` (push ``[]``), ``skip``, ``fail``.
    """

    template_fields: Sequence[str] = (
        "famulor_conn_id",
        "status",
        "quality_ratings",
        "min_messaging_limit",
        "sender_ids",
        "phone_numbers",
        "order_by",
        "if_empty",
    )
    ui_color = "#dcf8c6"

    def __init__(
        self,
        *,
        famulor_conn_id: str = "famulor_default",
        status: str = "online",
        quality_ratings: Iterable[str | None] | None = None,
        min_messaging_limit: int | None = None,
        sender_ids: Iterable[int] | None = None,
        phone_numbers: Iterable[str] | None = None,
        order_by: str | None = None,
        if_empty: str = "succeed",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.famulor_conn_id = famulor_conn_id
        self.status = status
        self.quality_ratings = quality_ratings
        self.min_messaging_limit = min_messaging_limit
        self.sender_ids = sender_ids
        self.phone_numbers = phone_numbers
        self.order_by = order_by
        self.if_empty = if_empty

    @cached_property
    def hook(self) -> FamulorHook:
        from famulor_provider.hooks.famulor import FamulorHook

        return FamulorHook(self.famulor_conn_id)

    def execute(self, context: Context) -> list[dict[str, Any]]:
        if_empty = check_choice("if_empty", self.if_empty, IF_EMPTY_CHOICES)
        order_by = check_choice("order_by", self.order_by or None, ORDER_BY_CHOICES)
        criteria = SenderCriteria.parse(
            quality_ratings=self.quality_ratings,
            min_messaging_limit=self.min_messaging_limit,
            sender_ids=self.sender_ids,
            phone_numbers=self.phone_numbers,
        )
        senders = criteria.select(self.hook.list_whatsapp_senders(status=self.status))
        if order_by == "capacity":
            senders = order_by_capacity(senders)

        if not senders:
            message = f"No WhatsApp sender with status {self.status!r} matches {criteria}"
            if if_empty == "skip":
                raise AirflowSkipException(message)
            if if_empty == "fail":
                raise FamulorError(message)
            self.log.info("%s; pushing an empty list", message)
        else:
            self.log.info("Pushing %d WhatsApp sender(s):\n%s", len(senders), sender_table(senders))
        context["ti"].xcom_push(key="sender_ids", value=[s.id for s in senders])
        return [s.to_dict() for s in senders]
