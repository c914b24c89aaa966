"""WhatsAppNotifier: a WhatsApp message to a few people from any Airflow callback."""

from __future__ import annotations

import random
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.notifier import BaseNotifier

from famulor_provider.exceptions import (
    FamulorDeliveryUnknownError,
    FamulorError,
    FamulorRateLimitError,
    FamulorSessionExpiredError,
    FamulorValidationError,
)
from famulor_provider.hook_mixin import FamulorHookMixin
from famulor_provider.notifications.claims import AlertClaims, default_claims_folder
from famulor_provider.privacy import phone_for_log
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
    from collections.abc import Awaitable, Callable, Sequence

    import jinja2
    from airflow.providers.common.compat.sdk import Context

DEFAULT_RATE_LIMIT_PATIENCE = 300.0
"""Seconds a notification keeps retrying 429 answers before it gives a recipient up."""
RATE_LIMIT_WAIT = 5.0  # seconds to wait on a 429 that names no Retry-After
RATE_LIMIT_JITTER = 1.0  # up to this much more, so callbacks throttled together do not retry together


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

    A 429 (too many requests) sends nothing, so it is retried, honouring ``Retry-After`` (capped
    at 60 s), until ``rate_limit_patience`` seconds have passed since the notification started: an
    alert survives a storm of failing tasks that all notify at once.

    With ``once_per_dag_run``, each recipient gets at most one message per DAG run from this
    notifier, however many tasks' callbacks fire: each callback first claims (DAG, run, recipient)
    in ``claims_folder`` (see :mod:`famulor_provider.notifications.claims`). A claim whose send
    surely did not go out is given back, so a later callback can still alert.

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
    :param rate_limit_patience: seconds to keep retrying 429 answers (default 300); 0 gives up
        after the hook's own retries.
    :param once_per_dag_run: send each recipient at most one message per DAG run (for task
        callbacks; a DAG's own ``on_failure_callback`` runs once per run anyway).
    :param claims_folder: where ``once_per_dag_run`` keeps its claims (default
        ``$AIRFLOW_HOME/famulor/alert-claims``); a shared volume when workers run on several hosts.
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
        rate_limit_patience: float = DEFAULT_RATE_LIMIT_PATIENCE,
        once_per_dag_run: bool = False,
        claims_folder: str | None = None,
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
        self.rate_limit_patience = rate_limit_patience
        self.once_per_dag_run = once_per_dag_run
        self.claims_folder = claims_folder
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

    clock: Callable[[], float] = staticmethod(time.monotonic)  # injectable for tests

    def notify(self, context: Context) -> None:
        """Message every recipient; raise a ``FamulorError`` naming those who got no message."""
        deadline = self._deadline()
        sender_id, phones, variables, text = self._arguments()
        run = self._claims(context)
        template_id = self._patiently(
            deadline,
            lambda: self.hook.resolve_template_id(
                sender_id, self.template_id, self.template_name, self.language
            ),
        )
        failed: dict[str, Exception] = {}
        skipped: list[str] = []

        def send(phone: str) -> None:
            if text:
                try:
                    self.hook.send_whatsapp_freeform(sender_id, phone, text)
                    return
                except FamulorSessionExpiredError:
                    self._log_fallback(phone)
            self.hook.send_whatsapp_template(sender_id, template_id, phone, variables=variables)

        for phone in phones:
            if run and not self._claim(run, phone):
                skipped.append(phone)
                continue
            try:
                self._patiently(deadline, partial(send, phone))
            except Exception as err:
                failed[phone] = err
                self._release(run, phone, err)
        self._report(phones, failed, skipped)

    async def async_notify(self, context: Context) -> None:
        """Async twin of :meth:`notify` (no blocking I/O), for deadline alerts on Airflow 3.1+."""
        deadline = self._deadline()
        sender_id, phones, variables, text = self._arguments()
        run = self._claims(context)
        template_id = await self._apatiently(
            deadline,
            lambda: self.hook.aresolve_template_id(
                sender_id, self.template_id, self.template_name, self.language
            ),
        )
        failed: dict[str, Exception] = {}
        skipped: list[str] = []

        async def send(phone: str) -> None:
            if text:
                try:
                    await self.hook.asend_whatsapp_freeform(sender_id, phone, text)
                    return
                except FamulorSessionExpiredError:
                    self._log_fallback(phone)
            await self.hook.asend_whatsapp_template(sender_id, template_id, phone, variables=variables)

        for phone in phones:
            if run and not self._claim(run, phone):
                skipped.append(phone)
                continue
            try:
                await self._apatiently(deadline, partial(send, phone))
            except Exception as err:
                failed[phone] = err
                self._release(run, phone, err)
        self._report(phones, failed, skipped)

    # -- 429 patience -----------------------------------------------------------------------------

    def _deadline(self) -> float:
        try:
            patience = float(self.rate_limit_patience)
        except (TypeError, ValueError):
            patience = -1.0
        if not patience >= 0:
            raise FamulorValidationError(
                "rate_limit_patience", f"give seconds (0 or more), not {self.rate_limit_patience!r}"
            )
        return self.clock() + patience

    def _rate_limit_wait(self, err: FamulorRateLimitError, deadline: float) -> float | None:
        """Seconds to wait before trying again after ``err``; ``None`` when past the patience."""
        from famulor_provider.transport import MAX_RETRY_AFTER

        wait = RATE_LIMIT_WAIT if err.retry_after is None else min(float(err.retry_after), MAX_RETRY_AFTER)
        wait += random.uniform(0, RATE_LIMIT_JITTER)
        if self.clock() + wait > deadline:
            return None
        self.log.warning("%s; trying again in %.1f s (rate_limit_patience)", err, wait)
        return wait

    def _patiently(self, deadline: float, call: Callable[[], Any]) -> Any:
        """``call()``, retried on 429 until ``deadline`` (a 429 sends nothing)."""
        while True:
            try:
                return call()
            except FamulorRateLimitError as err:
                wait = self._rate_limit_wait(err, deadline)
                if wait is None:
                    raise
                self.hook.sleep(wait)

    async def _apatiently(self, deadline: float, call: Callable[[], Awaitable[Any]]) -> Any:
        """Async twin of :meth:`_patiently`."""
        while True:
            try:
                return await call()
            except FamulorRateLimitError as err:
                wait = self._rate_limit_wait(err, deadline)
                if wait is None:
                    raise
                await self.hook.async_sleep(wait)

    # -- once per DAG run -------------------------------------------------------------------------

    def _claims(self, context: Context) -> tuple[AlertClaims, str, str] | None:
        """The claims and the (DAG id, run id) this notification claims in, if ``once_per_dag_run``."""
        if not self.once_per_dag_run:
            return None
        dag_run = context.get("dag_run")
        dag_id = _field(dag_run, "dag_id") or _field(context.get("dag"), "dag_id")
        run_id = context.get("run_id") or _field(dag_run, "run_id")
        if not dag_id or not run_id:
            raise FamulorValidationError(
                "once_per_dag_run", "the callback's context names no DAG run; use it in task or DAG callbacks"
            )
        folder = self.claims_folder if not is_blank(self.claims_folder) else default_claims_folder()
        return AlertClaims(str(folder)), str(dag_id), str(run_id)

    def _claim(self, run: tuple[AlertClaims, str, str], phone: str) -> bool:
        claims, dag_id, run_id = run
        if claims.claim(dag_id, run_id, phone):
            return True
        self.log.info("%s was alerted in this DAG run already (once_per_dag_run)", phone_for_log(phone))
        return False

    def _release(self, run: tuple[AlertClaims, str, str] | None, phone: str, err: Exception) -> None:
        """Give the claim back when the message surely did not go out."""
        if run and isinstance(err, FamulorError) and not isinstance(err, FamulorDeliveryUnknownError):
            claims, dag_id, run_id = run
            claims.release(dag_id, run_id, phone)

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
        self.log.info("No open 24-hour window with %s; sending the template instead", phone_for_log(phone))

    def _report(self, phones: list[str], failed: dict[str, Exception], skipped: list[str]) -> None:
        """Log who was messaged and who was not; raise a ``FamulorError`` naming the latter.

        Phones are shown as INFO lines show them (masked unless ``[famulor] log_full_phone_numbers``):
        the full numbers are the notifier's ``recipients``.
        """
        sent = [phone_for_log(p) for p in phones if p not in failed and p not in skipped]
        counts = (len(sent), len(phones))
        already = f"; {len(skipped)} alerted in this DAG run already" if skipped else ""
        if not failed and not skipped:
            self.log.info("WhatsApp notification sent to all %d recipient(s): %s", len(sent), sent)
            return
        if not failed:
            self.log.info("WhatsApp notification sent to %d of %d recipient(s): %s%s", *counts, sent, already)
            return
        not_sent = [phone_for_log(p) for p in failed]
        self.log.warning(
            "WhatsApp notification sent to %d of %d recipient(s): %s%s; not confirmed for %s",
            len(sent),
            len(phones),
            sent,
            already,
            not_sent,
        )
        reasons = "; ".join(f"{phone_for_log(phone)}: {err}" for phone, err in failed.items())
        raise FamulorError(
            f"WhatsApp notification failed for {len(failed)} of {len(phones)} recipient(s) "
            f"{not_sent}: {reasons}"
        )


send_whatsapp_notification = WhatsAppNotifier


def _field(value: Any, name: str) -> Any:
    """``value.name`` or ``value[name]`` (a deadline alert's context holds plain dicts)."""
    if isinstance(value, dict):
        return value.get(name)
    return getattr(value, name, None)
