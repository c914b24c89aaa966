"""Operators for Famulor's WhatsApp API."""

from __future__ import annotations

from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import (
    AirflowFailException,
    AirflowSkipException,
    AirflowTaskTimeout,
    BaseOperator,
)

from famulor_provider.exceptions import (
    FamulorAuthError,
    FamulorDeliveryUnknownError,
    FamulorError,
    FamulorInsufficientBalanceError,
    FamulorInvalidPhoneError,
    FamulorSessionExpiredError,
    FamulorTemplateError,
    FamulorValidationError,
)
from famulor_provider.models import (
    SenderCriteria,
    WhatsAppSender,
    WhatsAppTemplate,
    _as_list,
    order_by_capacity,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

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


def none_if_blank(value: Any) -> Any:
    """``None`` for a template that rendered nothing (``""``, ``"None"``, ``"null"``)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
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


class FamulorOperator(BaseOperator):
    """Base of the Famulor operators: a hook on ``famulor_conn_id``, built on the worker, not at parse."""

    famulor_conn_id: str

    @cached_property
    def hook(self) -> FamulorHook:
        from famulor_provider.hooks.famulor import FamulorHook

        return FamulorHook(self.famulor_conn_id)


class ListWhatsAppSendersOperator(FamulorOperator):
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

    def execute(self, context: Context) -> list[dict[str, Any]]:
        if_empty = check_choice("if_empty", self.if_empty, IF_EMPTY_CHOICES)
        order_by = check_choice("order_by", none_if_blank(self.order_by), ORDER_BY_CHOICES)
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


# -- templates and sends ---------------------------------------------------------------------------

# Failures a later try cannot fix: the task fails without retry. Everything else that a send
# raises (429 left after the retries, sender offline, never connected, other refusals) means
# nothing was sent, so Airflow's own ``retries`` may safely try again.
FINAL_ERRORS: tuple[type[FamulorError], ...] = (
    FamulorValidationError,
    FamulorInsufficientBalanceError,
    FamulorTemplateError,
    FamulorInvalidPhoneError,
    FamulorSessionExpiredError,
    FamulorAuthError,
)


@contextmanager
def send_failures(*, sending: bool = False) -> Iterator[None]:
    """Turn failures that a task retry must not repeat into ``AirflowFailException`` (no retry).

    :param sending: a send may be in flight: a task timeout here may leave a sent message
        behind, so it fails without retry too.
    """
    try:
        yield
    except FamulorDeliveryUnknownError as err:
        raise AirflowFailException(
            f"{err} Failing without retry: another try could send the message twice."
        ) from err
    except FINAL_ERRORS as err:
        raise AirflowFailException(f"Failing without retry (a retry cannot fix this): {err}") from err
    except AirflowTaskTimeout as err:
        if not sending:
            raise
        raise AirflowFailException(
            "Delivery unknown: the task timed out while a WhatsApp message was being sent; it may "
            "have been sent. Failing without retry: another try could send the message twice."
        ) from err


def template_table(templates: Iterable[WhatsAppTemplate]) -> str:
    """A small fixed-width table of templates for the task log."""
    rows = [("id", "name", "language", "category", "status", "variables")]
    rows += [
        (
            str(t.id),
            t.name,
            t.language or "",
            t.category or "",
            t.status or "",
            ",".join(map(str, t.variables)),
        )
        for t in templates
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _same_language(template: WhatsAppTemplate, language: str | None) -> bool:
    return language is None or (template.language or "").lower() == language.strip().lower()


def find_approved_template(
    templates: Iterable[WhatsAppTemplate], name: str, language: str | None, sender_id: int
) -> WhatsAppTemplate:
    """The one approved template called ``name`` (in ``language``), else a ``FamulorValidationError``.

    :param templates: the sender's templates (any status).
    :param name: the template's name.
    :param language: its language (e.g. ``en``); needed when the name is approved in several.
    :param sender_id: the sender, for the error message.
    """
    named = [t for t in templates if t.name == name and _same_language(t, language)]
    approved = [t for t in named if t.is_approved]
    where = f"template {name!r}" + (f" in language {language!r}" if language else "")
    if len(approved) == 1:
        return approved[0]
    if approved:
        languages = ", ".join(sorted(t.language or "?" for t in approved))
        raise FamulorValidationError("language", f"{where} is approved in {languages}; pass language=")
    if named:
        statuses = ", ".join(sorted({t.status or "unknown" for t in named}))
        raise FamulorValidationError(
            "template_name", f"{where} of sender {sender_id} is {statuses}, not approved"
        )
    raise FamulorValidationError("template_name", f"sender {sender_id} has no {where}")


class ListWhatsAppTemplatesOperator(FamulorOperator):
    """
    List a sender's message templates and push them to XCom (a list of template dicts).

    :param sender_id: the sender.
    :param status: ``approved`` (default) or ``all``.
    :param names: keep only templates with these names.
    :param language: keep only templates in this language (e.g. ``en``).
    :param famulor_conn_id: the Famulor connection.
    """

    template_fields: Sequence[str] = ("sender_id", "status", "names", "language", "famulor_conn_id")
    ui_color = "#dcf8c6"

    def __init__(
        self,
        *,
        sender_id: int,
        status: str = "approved",
        names: Iterable[str] | None = None,
        language: str | None = None,
        famulor_conn_id: str = "famulor_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sender_id = sender_id
        self.status = status
        self.names = names
        self.language = language
        self.famulor_conn_id = famulor_conn_id

    def execute(self, context: Context) -> list[dict[str, Any]]:
        names = _as_list(self.names, "names")
        language = self.language or None
        templates = [
            t
            for t in self.hook.list_whatsapp_templates(self.sender_id, status=self.status)
            if (names is None or t.name in names) and _same_language(t, language)
        ]
        self.log.info(
            "Pushing %d template(s) of sender %s:\n%s",
            len(templates),
            self.sender_id,
            template_table(templates),
        )
        return [t.to_dict() for t in templates]


class SendWhatsAppTemplateOperator(FamulorOperator):
    """
    Send one approved template message to one recipient; returns the message dict.

    One message per task instance: fan a campaign out with
    ``.partial(sender_id=..., template_name=...).expand_kwargs(recipients)``, and Airflow's task
    states record who was messaged. A task retry never sends twice: failures where nothing was
    sent and a later try can succeed (429, sender offline, no connection) raise ordinary errors
    so ``retries`` apply; a failure that a retry cannot fix (validation, balance, template,
    invalid phone) and every delivery-unknown failure fail the task without retry.

    :param sender_id: the sender.
    :param recipient_phone: the recipient (E.164, e.g. ``+14155551234``).
    :param template_id: the approved template's id; or give ``template_name``.
    :param template_name: the approved template's name, resolved to its id on the worker.
    :param language: the template's language, when its name is approved in several.
    :param variables: the template's variables, e.g. ``{"1": "A-1234"}``.
    :param recipient_name: the recipient's name (at most 255 characters).
    :param famulor_conn_id: the Famulor connection.
    """

    template_fields: Sequence[str] = (
        "sender_id",
        "recipient_phone",
        "template_id",
        "template_name",
        "language",
        "variables",
        "recipient_name",
        "famulor_conn_id",
    )
    template_fields_renderers = {"variables": "json"}
    ui_color = "#25d366"

    def __init__(
        self,
        *,
        sender_id: int,
        recipient_phone: str,
        template_id: int | None = None,
        template_name: str | None = None,
        language: str | None = None,
        variables: dict[str, Any] | None = None,
        recipient_name: str | None = None,
        famulor_conn_id: str = "famulor_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sender_id = sender_id
        self.recipient_phone = recipient_phone
        self.template_id = template_id
        self.template_name = template_name
        self.language = language
        self.variables = variables
        self.recipient_name = recipient_name
        self.famulor_conn_id = famulor_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from famulor_provider.hooks.famulor import (
            MAX_RECIPIENT_NAME_CHARS,
            check_id,
            check_phone,
            check_text,
            check_variables,
        )

        with send_failures():
            sender_id = check_id(self.sender_id, "sender_id")
            phone = check_phone(self.recipient_phone)
            variables = check_variables(self.variables)
            name = check_text(self.recipient_name, "recipient_name", MAX_RECIPIENT_NAME_CHARS, required=False)
            template_id = self._template_id(sender_id)
        with send_failures(sending=True):
            message = self.hook.send_whatsapp_template(
                sender_id, template_id, phone, variables=variables, recipient_name=name or None
            )
        return message.to_dict()

    def _template_id(self, sender_id: int) -> int:
        """The given ``template_id``, or the id of the approved template called ``template_name``."""
        from famulor_provider.hooks.famulor import check_id

        if (self.template_id is None) == (not self.template_name):
            raise FamulorValidationError("template_id", "give either template_id or template_name (not both)")
        if self.template_id is not None:
            return check_id(self.template_id, "template_id")
        templates = self.hook.list_whatsapp_templates(sender_id, status="all")
        template = find_approved_template(
            templates, str(self.template_name), self.language or None, sender_id
        )
        self.log.info("Template %r (%s) is id %s", template.name, template.language, template.id)
        return template.id


class SendWhatsAppFreeformOperator(FamulorOperator):
    """
    Send one free-form text inside the recipient's open 24-hour window; returns the message dict.

    When the window has expired, sends the fallback template if one is given, else fails
    without retry. Retries follow :class:`SendWhatsAppTemplateOperator`: never a second send.

    :param sender_id: the sender.
    :param recipient_phone: the recipient (E.164).
    :param message: the text (at most 4096 characters).
    :param fallback_template_id: an approved template to send instead when the window is closed.
    :param fallback_variables: the fallback template's variables.
    :param famulor_conn_id: the Famulor connection.
    """

    template_fields: Sequence[str] = (
        "sender_id",
        "recipient_phone",
        "message",
        "fallback_template_id",
        "fallback_variables",
        "famulor_conn_id",
    )
    template_fields_renderers = {"fallback_variables": "json"}
    ui_color = "#25d366"

    def __init__(
        self,
        *,
        sender_id: int,
        recipient_phone: str,
        message: str,
        fallback_template_id: int | None = None,
        fallback_variables: dict[str, Any] | None = None,
        famulor_conn_id: str = "famulor_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sender_id = sender_id
        self.recipient_phone = recipient_phone
        self.message = message
        self.fallback_template_id = fallback_template_id
        self.fallback_variables = fallback_variables
        self.famulor_conn_id = famulor_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from famulor_provider.hooks.famulor import (
            MAX_MESSAGE_CHARS,
            check_id,
            check_phone,
            check_text,
            check_variables,
        )

        with send_failures():
            sender_id = check_id(self.sender_id, "sender_id")
            phone = check_phone(self.recipient_phone)
            text = check_text(self.message, "message", MAX_MESSAGE_CHARS, required=True)
            fallback_id = None
            if self.fallback_template_id not in (None, ""):
                fallback_id = check_id(self.fallback_template_id, "fallback_template_id")
            fallback_variables = check_variables(self.fallback_variables, "fallback_variables")
        with send_failures(sending=True):
            try:
                message = self.hook.send_whatsapp_freeform(sender_id, phone, text)
            except FamulorSessionExpiredError as err:
                # Refused, so nothing was sent: the fallback cannot make a second message.
                if fallback_id is None:
                    raise AirflowFailException(
                        f"No open 24-hour window with {phone}, so a free-form message cannot be sent "
                        "(give fallback_template_id to send a template instead). Failing without retry."
                    ) from err
                self.log.info("No open 24-hour window with %s; sending template %s", phone, fallback_id)
                message = self.hook.send_whatsapp_template(
                    sender_id, fallback_id, phone, variables=fallback_variables
                )
        return message.to_dict()
