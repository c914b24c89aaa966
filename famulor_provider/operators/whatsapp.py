"""Operators for Famulor's WhatsApp API."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator

from famulor_provider.hook_mixin import FamulorHookMixin

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from airflow.providers.common.compat.sdk import Context

# Everything but the base classes is imported inside the methods that run on the worker: a DAG
# file that imports this module pays only for creating the operator classes.
IF_EMPTY_CHOICES = ("succeed", "skip", "fail")
ORDER_BY_CHOICES = (None, "capacity")
SENDER_STATUS_CHOICES = ("online", "offline", "all")


class ListWhatsAppSendersOperator(FamulorHookMixin, BaseOperator):
    """
    List the account's WhatsApp senders, filter and order them, and push them to XCom.

    Returns (XCom ``return_value``) a list of sender dicts with the API's fields, ready for
    dynamic task mapping (``send.expand(sender=list_senders.output)``), and pushes their ids
    under the XCom key ``sender_ids``; with ``do_xcom_push=False`` it pushes nothing.

    :param famulor_conn_id: the Famulor connection.
    :param status: ``online`` (default), ``offline`` or ``all``.
    :param quality_ratings: keep only these ratings (e.g. ``["GREEN", "YELLOW"]``; ``None`` in the
        list keeps senders that are not rated yet). Default ``None``: no filter, RED included,
        because this is an inventory (``WhatsAppSenderSensor``, which asks whether a sender can
        send, leaves RED out by default).
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
        from airflow.providers.common.compat.sdk import AirflowSkipException

        from famulor_provider.exceptions import FamulorError
        from famulor_provider.log_tables import sender_table
        from famulor_provider.models import SenderCriteria, order_by_capacity
        from famulor_provider.validation import check_choice, is_blank

        status = check_choice("status", self.status, SENDER_STATUS_CHOICES)
        if_empty = check_choice("if_empty", self.if_empty, IF_EMPTY_CHOICES)
        order_by = check_choice(
            "order_by", None if is_blank(self.order_by) else self.order_by, ORDER_BY_CHOICES
        )
        criteria = SenderCriteria.parse(
            quality_ratings=self.quality_ratings,
            min_messaging_limit=self.min_messaging_limit,
            sender_ids=self.sender_ids,
            phone_numbers=self.phone_numbers,
        )
        senders = criteria.select(self.hook.list_whatsapp_senders(status=status))
        if order_by == "capacity":
            senders = order_by_capacity(senders)

        if not senders:
            message = f"No WhatsApp sender with status {status!r} matches {criteria}"
            if if_empty == "skip":
                raise AirflowSkipException(message)
            if if_empty == "fail":
                raise FamulorError(message)
            self.log.info("%s; pushing an empty list", message)
        else:
            self.log.info("Pushing %d WhatsApp sender(s):\n%s", len(senders), sender_table(senders))
        if self.do_xcom_push:
            context["ti"].xcom_push(key="sender_ids", value=[s.id for s in senders])
        return [s.to_dict() for s in senders]


# -- templates and sends ---------------------------------------------------------------------------


@contextmanager
def send_failures(*, sending: bool = False) -> Iterator[None]:
    """Turn failures that a task retry must not repeat into ``AirflowFailException`` (no retry).

    Failures a later try cannot fix (bad input, balance, template, invalid phone, expired
    session, bad key) and delivery-unknown ones fail without retry. Everything else a send raises
    (429 left after the retries, sender offline, never connected) means nothing was sent, so
    Airflow's own ``retries`` may safely try again.

    :param sending: a send may be in flight: a task timeout here may leave a sent message
        behind, so it fails without retry too.
    """
    from airflow.providers.common.compat.sdk import AirflowFailException, AirflowTaskTimeout

    from famulor_provider.exceptions import (
        FamulorAuthError,
        FamulorDeliveryUnknownError,
        FamulorInsufficientBalanceError,
        FamulorInvalidPhoneError,
        FamulorSessionExpiredError,
        FamulorTemplateError,
        FamulorValidationError,
    )

    final_errors = (
        FamulorValidationError,
        FamulorInsufficientBalanceError,
        FamulorTemplateError,
        FamulorInvalidPhoneError,
        FamulorSessionExpiredError,
        FamulorAuthError,
    )
    try:
        yield
    except FamulorDeliveryUnknownError as err:
        raise AirflowFailException(
            f"{err} Failing without retry: another try could send the message twice."
        ) from err
    except final_errors as err:
        raise AirflowFailException(f"Failing without retry (a retry cannot fix this): {err}") from err
    except AirflowTaskTimeout as err:
        if not sending:
            raise
        raise AirflowFailException(
            "Delivery unknown: the task timed out while a WhatsApp message was being sent; it may "
            "have been sent. Failing without retry: another try could send the message twice."
        ) from err


def sent_result(operator: Any, message: Any) -> dict[str, Any]:
    """A single send's result (XCom): the message, plus where "after the send" begins for a reply
    sensor (one short read; skipped when nothing is pushed to XCom).

    :param operator: the send operator (its hook and ``do_xcom_push``).
    :param message: the accepted ``WhatsAppMessage``.
    """
    from famulor_provider.conversations.replies import AFTER_SEND_KEYS, history_after_send

    if not operator.do_xcom_push:
        return {**message.to_dict(), **dict.fromkeys(AFTER_SEND_KEYS)}
    return {**message.to_dict(), **history_after_send(operator.hook, message)}


class ListWhatsAppTemplatesOperator(FamulorHookMixin, BaseOperator):
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
        from famulor_provider.log_tables import template_table
        from famulor_provider.models import same_language
        from famulor_provider.validation import as_list, is_blank

        names = as_list(self.names, "names")
        language = None if is_blank(self.language) else self.language
        templates = [
            t
            for t in self.hook.list_whatsapp_templates(self.sender_id, status=self.status)
            if (names is None or t.name in names) and same_language(t, language)
        ]
        self.log.info(
            "Pushing %d template(s) of sender %s:\n%s",
            len(templates),
            self.sender_id,
            template_table(templates),
        )
        return [t.to_dict() for t in templates]


class SendWhatsAppTemplateOperator(FamulorHookMixin, BaseOperator):
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
        from famulor_provider.validation import (
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
        return sent_result(self, message)

    def _template_id(self, sender_id: int) -> int:
        """The given ``template_id``, or the id of the approved template called ``template_name``."""
        return self.hook.resolve_template_id(sender_id, self.template_id, self.template_name, self.language)


class SendWhatsAppFreeformOperator(FamulorHookMixin, BaseOperator):
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
        from airflow.providers.common.compat.sdk import AirflowFailException

        from famulor_provider.exceptions import FamulorSessionExpiredError
        from famulor_provider.validation import (
            MAX_MESSAGE_CHARS,
            check_id,
            check_phone,
            check_text,
            check_variables,
            is_blank,
        )

        with send_failures():
            sender_id = check_id(self.sender_id, "sender_id")
            phone = check_phone(self.recipient_phone)
            text = check_text(self.message, "message", MAX_MESSAGE_CHARS, required=True)
            fallback_id = None
            if not is_blank(self.fallback_template_id):
                fallback_id = check_id(self.fallback_template_id, "fallback_template_id")
            fallback_variables = check_variables(self.fallback_variables, "fallback_variables")
        with send_failures(sending=True):
            try:
                message = self.hook.send_whatsapp_freeform(sender_id, phone, text)
            except FamulorSessionExpiredError as err:
                from famulor_provider.privacy import phone_for_log

                # Refused, so nothing was sent: the fallback cannot make a second message.
                if fallback_id is None:
                    raise AirflowFailException(
                        f"No open 24-hour window with {phone_for_log(phone)} (this task's recipient_phone), "
                        "so a free-form message cannot be sent (give fallback_template_id to send a template "
                        "instead). Failing without retry."
                    ) from err
                self.log.info(
                    "No open 24-hour window with %s; sending template %s", phone_for_log(phone), fallback_id
                )
                message = self.hook.send_whatsapp_template(
                    sender_id, fallback_id, phone, variables=fallback_variables
                )
        return sent_result(self, message)


class SendWhatsAppCampaignOperator(FamulorHookMixin, BaseOperator):
    """
    Send one approved template to many recipients in one task, paced at the account's limit.

    Every recipient is checked and deduplicated (by normalized phone) before the first send. A
    durable ledger (per task instance, under ``ledger_path``: a POSIX folder or an S3 bucket) records each
    recipient before and after its request, and every later try (a retry, a clear, a rerun after
    the worker was killed) reads it first: a sent recipient is never sent again, one whose
    outcome is unknown is not sent again unless ``resend_unknown``, one rejected for good
    (``INVALID_PHONE`` ...) never, one refused this time (429, offline, ...) is tried again.
    Returns a summary dict (``recipients``, ``sent``, ``rejected``, ``unknown``, ``failed``,
    ``invalid``, ``duplicates``, ``ledger``, ...). When a recipient ended unknown or failed, the
    task fails after every other recipient was tried; without retry when nothing left can be
    retried safely. Rejected recipients fail it (without retry) only past ``max_rejected``.

    :param sender_id: the sender.
    :param recipients: a list of dicts (``recipient_phone``, optional ``recipient_name`` and
        ``variables``), e.g. an upstream task's output, or the path or URI of a CSV or JSON Lines
        file (read through Airflow's ``ObjectStoragePath``, streamed). CSV: column
        ``recipient_phone``, optional ``recipient_name``, every other column is a variable.
    :param template_id: the approved template's id; or give ``template_name``.
    :param template_name: the approved template's name, resolved once per campaign.
    :param language: the template's language, when its name is approved in several.
    :param ledger_path: where the ledger lives, seen by every worker: a folder (path or ``file://``
        URI) on a POSIX file system, or ``s3://bucket/prefix`` (S3 or an S3-compatible store; needs
        ``airflow-provider-famulor[amazon]``); default ``$AIRFLOW_HOME/famulor/campaign-ledgers``.
    :param ledger_conn_id: the Airflow AWS connection of an ``s3://`` ledger_path.
    :param max_sends_per_second: the account's send limit (default ``None``: the documented 5/s).
    :param invalid_recipients: ``"fail"`` (default: send nothing if any row is invalid) or ``"skip"``.
    :param resend_unknown: send again to recipients whose outcome an earlier try could not know.
    :param max_rejected: how many recipients the API may reject for good (``INVALID_PHONE`` ...)
        before the task fails: a count (``100``), or a fraction of the recipients below 1
        (``0.01``). Default ``None``: no limit, rejections are counted (``rejected``) and the task
        succeeds. Past the limit the task fails without retry after every recipient was tried.
    :param offline_timeout: seconds to wait for an offline sender before failing (a retry resumes).
    :param check_messaging_limit: fail before sending when the sender's 24 h limit of unique
        recipients is smaller than the campaign.
    :param recipients_conn_id: the Airflow connection for a remote recipients file (``s3://`` ...).
    :param allow_new_ledger: let a try after the first create the ledger. Only for a task instance
        whose earlier tries all failed before their first send (e.g. on a template error): with
        a ledger on storage this worker does not see, it would send again.
    :param famulor_conn_id: the Famulor connection.
    """

    template_fields: Sequence[str] = (
        "sender_id",
        "recipients",
        "allow_new_ledger",
        "template_id",
        "template_name",
        "language",
        "ledger_path",
        "ledger_conn_id",
        "max_sends_per_second",
        "invalid_recipients",
        "resend_unknown",
        "max_rejected",
        "offline_timeout",
        "check_messaging_limit",
        "recipients_conn_id",
        "famulor_conn_id",
    )
    template_fields_renderers = {"recipients": "json"}
    ui_color = "#25d366"

    def __init__(
        self,
        *,
        sender_id: int,
        recipients: Any,
        template_id: int | None = None,
        template_name: str | None = None,
        language: str | None = None,
        ledger_path: str | None = None,
        ledger_conn_id: str = "aws_default",
        max_sends_per_second: float | None = None,
        invalid_recipients: str = "fail",
        resend_unknown: bool = False,
        max_rejected: int | float | None = None,
        offline_timeout: float = 900.0,
        check_messaging_limit: bool = True,
        recipients_conn_id: str | None = None,
        allow_new_ledger: bool = False,
        famulor_conn_id: str = "famulor_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sender_id = sender_id
        self.recipients = recipients
        self.allow_new_ledger = allow_new_ledger
        self.template_id = template_id
        self.template_name = template_name
        self.language = language
        self.ledger_path = ledger_path
        self.ledger_conn_id = ledger_conn_id
        self.max_sends_per_second = max_sends_per_second
        self.invalid_recipients = invalid_recipients
        self.resend_unknown = resend_unknown
        self.max_rejected = max_rejected
        self.offline_timeout = offline_timeout
        self.check_messaging_limit = check_messaging_limit
        self.recipients_conn_id = recipients_conn_id
        self.famulor_conn_id = famulor_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from famulor_provider.campaign.ledger import CampaignLedger
        from famulor_provider.validation import check_flag, check_id, is_blank

        ti = context["ti"]
        with send_failures():
            sender_id = check_id(self.sender_id, "sender_id")
            given_id = None if is_blank(self.template_id) else check_id(self.template_id, "template_id")
            # First in every try: the ledger says what earlier tries sent.
            ledger = CampaignLedger.open(
                None if is_blank(self.ledger_path) else str(self.ledger_path),
                dag_id=ti.dag_id,
                run_id=ti.run_id,
                task_id=ti.task_id,
                map_index=ti.map_index if ti.map_index is not None else -1,
                try_number=ti.try_number,
                sender_id=sender_id,
                template_id=given_id,
                allow_new_ledger=check_flag(self.allow_new_ledger, "allow_new_ledger"),
                conn_id=str(self.ledger_conn_id or "aws_default"),
            )
        self.log.info("Campaign ledger: %s (try %d of this task instance)", ledger.path, ledger.tries)
        with ledger:
            return self._run(sender_id, ledger)

    def _run(self, sender_id: int, ledger: Any) -> dict[str, Any]:
        from airflow.providers.common.compat.sdk import AirflowFailException

        from famulor_provider.campaign.ledger import IN_FLIGHT, REFUSED, REJECTED, SENT, UNKNOWN
        from famulor_provider.campaign.recipients import plan_recipients
        from famulor_provider.campaign.runner import (
            CampaignRunner,
            CampaignSettings,
            CampaignStopped,
            rejection_limit,
            rejections_exceeded,
        )
        from famulor_provider.exceptions import FamulorError
        from famulor_provider.hooks.famulor import FamulorHook
        from famulor_provider.pacing import SEND_RATE_PER_SECOND, SendPacer
        from famulor_provider.validation import check_flag, check_positive_number, is_blank

        with send_failures():
            rate = (
                check_positive_number(self.max_sends_per_second, "max_sends_per_second")
                or SEND_RATE_PER_SECOND
            )
            offline_timeout = check_positive_number(self.offline_timeout, "offline_timeout") or 0.0
            resend_unknown = check_flag(self.resend_unknown, "resend_unknown")
            max_rejected = rejection_limit(self.max_rejected)
            plan = plan_recipients(
                self.recipients,
                self.invalid_recipients,
                conn_id=None if is_blank(self.recipients_conn_id) else str(self.recipients_conn_id),
            )
            self.log.info("Recipients: %s", plan.counts())
            if plan.invalid:
                self.log.warning("Skipping %d invalid row(s): %s", plan.invalid, plan.describe_invalid())
            template_id = self.hook.resolve_template_id(
                sender_id, self.template_id, self.template_name, self.language
            )
            self._check_sender(sender_id, plan.unique)
        send_hook = FamulorHook(self.famulor_conn_id, max_retries=0)  # the campaign retries itself
        send_hook.send_pacer = SendPacer(0.0)  # ... and paces itself
        settings = CampaignSettings(
            sender_id, template_id, rate or SEND_RATE_PER_SECOND, resend_unknown, offline_timeout
        )
        runner = CampaignRunner(send_hook, settings, ledger)
        try:
            # Not sending=True: a task timeout leaves the send in flight in the ledger (unknown), so
            # a retry cannot send it twice and may safely go on with the others.
            with send_failures():
                runner.run(plan, plan.unique)
        except CampaignStopped as err:
            if err.retryable:
                raise
            raise AirflowFailException(str(err)) from err
        counts = ledger.counts()
        summary = {
            **plan.counts(),
            "sent": counts[SENT],
            "rejected": counts[REJECTED],
            "unknown": counts[UNKNOWN] + counts[IN_FLIGHT],
            "failed": counts[REFUSED],
            "sent_this_try": runner.outcomes[SENT],
            "answered_429": runner.rate_limited,
            "ledger": ledger.path,
        }
        self.log.info("Campaign summary: %s", summary)
        if rejections_exceeded(summary["rejected"], max_rejected, plan.unique):
            raise AirflowFailException(
                f"Campaign finished with {summary['rejected']} of {plan.unique} recipient(s) rejected "
                f"for good by the API (INVALID_PHONE ...), more than max_rejected={max_rejected:g} "
                f"allows; {summary['sent']} sent, {summary['failed']} refused this time, "
                f"{summary['unknown']} unknown. Failing without retry: a retry would not send them "
                f"either. Each one and its error code is in the ledger {ledger.path}."
            )
        if summary["unknown"] or summary["failed"]:
            message = (
                f"Campaign finished with {summary['failed']} recipient(s) refused by the API and "
                f"{summary['unknown']} whose delivery is unknown (they may have been sent); "
                f"{summary['sent']} sent. Every recipient and its outcome is in the ledger {ledger.path}."
            )
            if summary["failed"]:
                raise FamulorError(f"{message} A retry tries the refused recipients again, nothing else.")
            if not resend_unknown:
                raise AirflowFailException(
                    f"{message} Failing without retry: nothing left can be sent again safely. Check the "
                    "unknown ones in Famulor; set resend_unknown=True and clear the task to send them again."
                )
        return summary

    def _check_sender(self, sender_id: int, unique_recipients: int) -> None:
        """Fail before sending when the sender is not in the account or its 24 h limit is too small."""
        from famulor_provider.exceptions import FamulorValidationError
        from famulor_provider.models import SenderCriteria, matching_senders
        from famulor_provider.validation import check_flag

        senders = self.hook.list_whatsapp_senders(status="all")
        [sender] = matching_senders(SenderCriteria(sender_ids=(sender_id,)), senders, self.famulor_conn_id)
        limit = sender.messaging_limit
        self.log.info(
            "Sender %s (%s): %s, quality %s, limit %s unique recipients per 24 h",
            sender.id,
            sender.phone_number,
            sender.status,
            sender.quality_rating,
            "unlimited" if limit is None else limit,
        )
        check_limit = check_flag(self.check_messaging_limit, "check_messaging_limit")
        if check_limit and limit is not None and unique_recipients > limit:
            raise FamulorValidationError(
                "recipients",
                f"{unique_recipients} unique recipients, but sender {sender_id} may message only "
                f"{limit} unique recipients per 24 h (its messaging_limit). Split the campaign, "
                "or set check_messaging_limit=False if recipients messaged in the last 24 h are "
                "among them.",
            )
