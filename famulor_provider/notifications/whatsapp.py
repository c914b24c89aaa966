"""WhatsAppNotifier: a WhatsApp message to a few people from any Airflow callback."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.notifier import BaseNotifier

from famulor_provider.exceptions import FamulorError, FamulorSessionExpiredError, FamulorValidationError
from famulor_provider.hook_mixin import FamulorHookMixin
from famulor_provider.validation import (
    MAX_MESSAGE_CHARS,
    as_list,
    check_id,
    check_text,
    check_variables,
    is_blank,
    normalize_phone,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    import jinja2
    from airflow.providers.common.compat.sdk import Context


class WhatsAppNotifier(FamulorHookMixin, BaseNotifier):
    """
    Send a WhatsApp message to each recipient when a callback fires.

    Use it as a task or DAG callback (``on_failure_callback``, ``on_success_callback``,
    ``on_retry_callback``, ``sla_miss_callback`` on 2.11) or, on Airflow 3.1+, as the async callback
    of a deadline alert. Every argument is a template field, rendered with the callback's context.

    Each recipient gets at most one message per notification: a send is retried only where
    nothing can have been sent, and a delivery-unknown failure is never retried. With ``message``,
    the text is sent free-form, and the template only to recipients whose 24-hour window is closed
    (that refusal sends nothing, so nobody gets both). One recipient's failure does not stop the
    others; afterwards a ``FamulorError`` names the recipients who got no message.

    :param sender_id: the sender.
    :param recipients: one phone number (E.164), a list of them, or their comma-separated or
        JSON-list text; a number listed twice is messaged once.
    :param template_id: the approved template's id; or give ``template_name`` (one of the two is
        needed even with ``message``: the template is its fallback).
    :param template_name: the approved template's name, resolved once per notification.
    :param language: the template's language, when its name is approved in several.
    :param variables: the template's variables, e.g. ``{"1": "{{ ti.task_id }}"}``.
    :param message: a free-form text (at most 4096 characters) to send instead of the template
        where the recipient's window is open.
    :param famulor_conn_id: the Famulor connection.
    :param context: the context Airflow 3.1+ passes to a deadline alert's callback.
    """

    template_fields: Sequence[str] = (
        "sender_id",
        "recipients",
        "template_id",
        "template_name",
        "language",
        "variables",
        "message",
        "famulor_conn_id",
    )

    def __init__(
        self,
        *,
        sender_id: int | str,
        recipients: str | Sequence[str],
        template_id: int | str | None = None,
        template_name: str | None = None,
        language: str | None = None,
        variables: dict[str, Any] | str | None = None,
        message: str | None = None,
        famulor_conn_id: str = "famulor_default",
        context: Context | None = None,
    ) -> None:
        if context is None:
            super().__init__()
        else:  # only Airflow 3.1+ passes one, and only its BaseNotifier takes it
            super().__init__(context=context)
        self.sender_id = sender_id
        self.recipients = recipients
        self.template_id = template_id
        self.template_name = template_name
        self.language = language
        self.variables = variables
        self.message = message
        self.famulor_conn_id = famulor_conn_id
        self._templates = {name: getattr(self, name) for name in self.template_fields}

    def render_template_fields(self, context: Context, jinja_env: jinja2.Environment | None = None) -> None:
        """Render the fields from their templates, not from an earlier rendering.

        Rendering replaces the fields in place; one notifier shared by several tasks (``default_args``,
        ``dag.test()`` in one process) must render each callback's own values.

        :param context: the callback's context.
        :param jinja_env: the Jinja environment to render with.
        """
        for name, template in self._templates.items():
            setattr(self, name, template)
        self.__dict__.pop("hook", None)  # famulor_conn_id may render differently
        if jinja_env is None and not hasattr(context.get("dag"), "get_template_env"):
            # `airflow dags test` on 3.x hands DAG callbacks a SerializedDAG (apache/airflow#64649).
            jinja_env = self.get_template_env()
        super().render_template_fields(context, jinja_env)

    def notify(self, context: Context) -> None:
        """Message every recipient; raise a ``FamulorError`` naming those who got no message."""
        sender_id, phones, variables, text = self._arguments()
        template_id = self.hook.resolve_template_id(
            sender_id, self.template_id, self.template_name, self.language
        )
        failed: dict[str, Exception] = {}
        for phone in phones:
            try:
                if text:
                    try:
                        self.hook.send_whatsapp_freeform(sender_id, phone, text)
                        continue
                    except FamulorSessionExpiredError:
                        self._log_fallback(phone)
                self.hook.send_whatsapp_template(sender_id, template_id, phone, variables=variables)
            except Exception as err:
                failed[phone] = err
        self._report(phones, failed)

    async def async_notify(self, context: Context) -> None:
        """Async twin of :meth:`notify` (no blocking I/O), for deadline alerts on Airflow 3.1+."""
        sender_id, phones, variables, text = self._arguments()
        template_id = await self.hook.aresolve_template_id(
            sender_id, self.template_id, self.template_name, self.language
        )
        failed: dict[str, Exception] = {}
        for phone in phones:
            try:
                if text:
                    try:
                        await self.hook.asend_whatsapp_freeform(sender_id, phone, text)
                        continue
                    except FamulorSessionExpiredError:
                        self._log_fallback(phone)
                await self.hook.asend_whatsapp_template(sender_id, template_id, phone, variables=variables)
            except Exception as err:
                failed[phone] = err
        self._report(phones, failed)

    def _arguments(self) -> tuple[int, list[str], dict[str, Any] | None, str]:
        """The checked sender, variables and text, and the recipients without duplicates.

        A malformed phone number stays in the list: its send fails alone, the others go out.
        """
        sender_id = check_id(self.sender_id, "sender_id")
        recipients = as_list(self.recipients, "recipients") or []
        phones = list(dict.fromkeys(normalize_phone(str(p).strip()) for p in recipients))
        if not phones:
            raise FamulorValidationError("recipients", "give at least one phone number")
        variables = check_variables(self.variables)
        text = check_text(
            None if is_blank(self.message) else self.message, "message", MAX_MESSAGE_CHARS, required=False
        )
        return sender_id, phones, variables, text

    def _log_fallback(self, phone: str) -> None:
        self.log.info("No open 24-hour window with %s; sending the template instead", phone)

    def _report(self, phones: list[str], failed: dict[str, Exception]) -> None:
        """Log who was messaged and who was not; raise a ``FamulorError`` naming the latter."""
        sent = [p for p in phones if p not in failed]
        if not failed:
            self.log.info("WhatsApp notification sent to all %d recipient(s): %s", len(sent), sent)
            return
        self.log.warning(
            "WhatsApp notification sent to %d of %d recipient(s): %s; not confirmed for %s",
            len(sent),
            len(phones),
            sent,
            list(failed),
        )
        reasons = "; ".join(f"{phone}: {err}" for phone, err in failed.items())
        raise FamulorError(
            f"WhatsApp notification failed for {len(failed)} of {len(phones)} recipient(s) "
            f"{list(failed)}: {reasons}"
        )


send_whatsapp_notification = WhatsAppNotifier
