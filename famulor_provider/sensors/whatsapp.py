"""Sensors for Famulor's WhatsApp API.

Importing this module must stay cheap (the DAG processor imports it): the hook, ``requests``,
``httpx`` and ``tenacity`` are imported inside the methods that use them.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseSensorOperator

from famulor_provider.hook_mixin import FamulorHookMixin

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from airflow.providers.common.compat.sdk import Context, PokeReturnValue

    from famulor_provider.models import SenderCriteria

# Famulor syncs sender status with Meta every 5 minutes: polling faster learns nothing new.
DEFAULT_POKE_INTERVAL = 300.0


class WhatsAppSenderSensor(FamulorHookMixin, BaseSensorOperator):
    """
    Wait until WhatsApp senders can send: online, a good quality rating, enough capacity.

    A sender matches when its status is ``online``, its quality rating is in
    ``quality_ratings``, its messaging limit is at least ``min_messaging_limit`` and, when
    given, its id is ``sender_id`` and its number ``phone_number``. The sensor is done when at
    least ``min_count`` senders match; it returns (XCom ``return_value``) the matching senders
    as dicts with the API's fields, in poke, reschedule and deferrable mode alike.

    It lists ``status=all`` senders, so a ``sender_id`` or ``phone_number`` that is not in the
    account at all fails at once (``FamulorSenderNotFoundError``) rather than waiting for days.
    Auth errors fail at once in every mode; transient faults (429, 5xx, timeouts, after the
    hook's retries) are logged and the sensor keeps waiting.

    The default ``poke_interval`` is 300 s because Famulor syncs sender status with Meta every
    5 minutes: polling faster learns nothing new and spends the account's 100 requests/minute.

    :param famulor_conn_id: the Famulor connection.
    :param sender_id: wait for this sender (the ``sender_id`` that sends take).
    :param phone_number: wait for the sender with this phone number (E.164).
    :param quality_ratings: acceptable quality ratings (``None`` in the list: not rated yet).
        Default: every rating except ``RED``, unrated included, because the sensor asks whether a
        sender can send and a RED rating may restrict sending. (``ListWhatsAppSendersOperator``
        is an inventory: there ``None`` means no filter, RED included.)
    :param min_messaging_limit: the 24 h messaging limit a sender needs at least; unlimited
        senders always pass.
    :param min_count: how many senders must match.
    :param deferrable: wait in the triggerer instead of a worker slot; ``None`` (default) follows
        ``[operators] default_deferrable``, read when the task runs.
    :param poke_interval: seconds between polls (default 300).
    """

    template_fields: Sequence[str] = (
        "famulor_conn_id",
        "sender_id",
        "phone_number",
        "quality_ratings",
        "min_messaging_limit",
        "min_count",
    )
    ui_color = "#dcf8c6"

    def __init__(
        self,
        *,
        famulor_conn_id: str = "famulor_default",
        sender_id: int | None = None,
        phone_number: str | None = None,
        quality_ratings: Iterable[str | None] | None = None,
        min_messaging_limit: int | None = None,
        min_count: int = 1,
        deferrable: bool | None = None,
        poke_interval: timedelta | float = DEFAULT_POKE_INTERVAL,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, **kwargs)
        self.famulor_conn_id = famulor_conn_id
        self.sender_id = sender_id
        self.phone_number = phone_number
        self.quality_ratings = quality_ratings
        self.min_messaging_limit = min_messaging_limit
        self.min_count = min_count
        self.deferrable = deferrable

    def sender_criteria(self) -> SenderCriteria:
        """The (rendered) arguments as criteria; raises ``FamulorValidationError`` when invalid."""
        from famulor_provider.models import QualityRating, SenderCriteria
        from famulor_provider.validation import is_blank

        ratings = None if is_blank(self.quality_ratings) else self.quality_ratings
        return SenderCriteria.parse(
            online_only=True,
            quality_ratings=ratings,
            excluded_quality_ratings=(QualityRating.RED,) if ratings is None else (),
            min_messaging_limit=self.min_messaging_limit,
            sender_ids=None if is_blank(self.sender_id) else [self.sender_id],
            phone_numbers=None if is_blank(self.phone_number) else [self.phone_number],
        )

    def _min_count(self) -> int:
        """The (rendered) ``min_count``; raises ``FamulorValidationError`` when it cannot match."""
        from famulor_provider.exceptions import FamulorValidationError
        from famulor_provider.validation import is_blank

        text = str(self.min_count).strip()
        if isinstance(self.min_count, bool) or not text.isdigit() or int(text) < 1:
            raise FamulorValidationError("min_count", f"expected a whole number >= 1, got {self.min_count!r}")
        if int(text) > 1 and not (is_blank(self.sender_id) and is_blank(self.phone_number)):
            raise FamulorValidationError(
                "min_count", f"{text} can never match: sender_id / phone_number select one sender"
            )
        return int(text)

    def _is_deferrable(self) -> bool:
        if self.deferrable is None:  # read when the task runs, never at import
            from airflow.providers.common.compat.sdk import conf

            return conf.getboolean("operators", "default_deferrable", fallback=False)
        return bool(self.deferrable)

    def poke(self, context: Context) -> PokeReturnValue:
        from airflow.providers.common.compat.sdk import PokeReturnValue

        from famulor_provider.exceptions import FamulorError
        from famulor_provider.log_tables import sender_table
        from famulor_provider.models import matching_senders
        from famulor_provider.transport import is_retryable_read

        criteria, min_count = self.sender_criteria(), self._min_count()
        try:
            senders = self.hook.list_whatsapp_senders(status="all")
        except FamulorError as err:
            if not is_retryable_read(err):
                raise
            self.log.warning("Famulor is unavailable for now (%s); still waiting", err)
            return PokeReturnValue(is_done=False)
        matching = matching_senders(criteria, senders, self.famulor_conn_id)
        if len(matching) >= min_count:
            self.log.info("%d WhatsApp sender(s) match:\n%s", len(matching), sender_table(matching))
            return PokeReturnValue(is_done=True, xcom_value=[s.to_dict() for s in matching])
        self.log.info(
            "%d of %d WhatsApp sender(s) match %s, waiting for %d",
            len(matching),
            len(senders),
            criteria,
            min_count,
        )
        return PokeReturnValue(is_done=False, xcom_value=[s.to_dict() for s in matching])

    def execute(self, context: Context) -> Any:
        if not self._is_deferrable():
            return super().execute(context)
        started_at = time.time()
        result = self.poke(context)
        if not result.is_done:
            # Imported here: the trigger module pulls in Airflow's trigger base at DAG-parse time.
            from famulor_provider.triggers.whatsapp import WhatsAppSenderTrigger

            # The trigger ends itself at the sensor's end time, so every Airflow line sees an
            # AirflowSensorTimeout (2.11 would raise TaskDeferralTimeout from the deferral timeout).
            self.defer(
                trigger=WhatsAppSenderTrigger(
                    famulor_conn_id=self.famulor_conn_id,
                    criteria=self.sender_criteria(),
                    min_count=self._min_count(),
                    poll_interval=self.poke_interval,
                    end_time=started_at + self.timeout,
                ),
                method_name="execute_complete",
                timeout=timedelta(seconds=self.timeout),
            )
        return result.xcom_value

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Resume after the trigger: return the matching senders, or raise its timeout or error."""
        from airflow.providers.common.compat.sdk import AirflowSensorTimeout, AirflowSkipException

        from famulor_provider.exceptions import FamulorError, error_from_event

        event = event or {}
        status = event.get("status")
        if status == "success":
            senders: list[dict[str, Any]] = event["senders"]
            self.log.info("%d WhatsApp sender(s) match: %s", len(senders), [s["id"] for s in senders])
            return senders
        if status == "timeout":
            message = str(event.get("message") or "Sensor has timed out")
            if self.soft_fail:
                raise AirflowSkipException(message)
            raise AirflowSensorTimeout(message)
        if status == "error":
            raise error_from_event(event)
        raise FamulorError(f"WhatsAppSenderTrigger sent an unexpected event: {event!r}")


# A reply is worth knowing within a minute; 60 s polls also keep 1,000 waiting sensors cheap.
DEFAULT_REPLY_POKE_INTERVAL = 60.0


class WhatsAppReplySensor(FamulorHookMixin, BaseSensorOperator):
    """
    Wait for a customer's WhatsApp reply, e.g. YES or NO to a confirmation template.

    ``after`` is a single send's result (``SendWhatsAppTemplateOperator`` or
    ``SendWhatsAppFreeformOperator``, ``send.output``): customer messages written after that send
    count, also those written before the sensor's first poke. Without ``after``, ``sender_id`` and
    ``recipient_phone`` name the conversation and only messages that arrive after the sensor
    starts count (poke and deferrable mode only: Airflow clears a task's XCom at each reschedule
    and messages carry no time, so reschedule mode needs ``after``). The assistant's messages
    never count.

    With ``choices`` a reply counts only when it equals one of them after Unicode NFKC and case
    folding, without zero-width characters, variation selectors and skin tones, and without the
    spaces, punctuation, WhatsApp formatting markers (``*_~```) and emoji around the words
    (``" yes! "`` and ``"*Yes* 👍"`` are ``YES``; ``"Yes, but later"`` is not); other replies
    are logged and waited past. The sensor returns (XCom) ``conversation_id`` (uuid),
    ``sender_phone``, ``recipient_phone``, ``text`` (the reply as written), ``choice`` (the entry
    of ``choices`` as written there, or ``None``), ``message_index`` and ``replies`` (every
    customer message after the send seen so far, in order); the same in every mode.

    An unknown ``sender_id`` and a bad key fail at once; transient faults (429, 5xx, timeouts)
    are logged and waited past; a conversation that does not exist yet is waited for. Deferred
    sensors of one connection share their polling in the triggerer (see the README, "Waiting for
    a reply", for what an interval costs).

    :param after: a single send's result (the dict in XCom).
    :param sender_id: the sender, when there is no ``after``.
    :param recipient_phone: the customer (E.164), when there is no ``after``.
    :param choices: the accepted answers, e.g. ``["YES", "NO"]``; ``None``: any reply.
    :param famulor_conn_id: the Famulor connection.
    :param deferrable: wait in the triggerer instead of a worker slot; ``None`` (default) follows
        ``[operators] default_deferrable``, read when the task runs.
    :param poke_interval: seconds between polls (default 60).
    """

    template_fields: Sequence[str] = ("after", "sender_id", "recipient_phone", "choices", "famulor_conn_id")
    ui_color = "#dcf8c6"

    def __init__(
        self,
        *,
        after: Any = None,
        sender_id: int | None = None,
        recipient_phone: str | None = None,
        choices: Iterable[str] | None = None,
        famulor_conn_id: str = "famulor_default",
        deferrable: bool | None = None,
        poke_interval: timedelta | float = DEFAULT_REPLY_POKE_INTERVAL,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, **kwargs)
        self.after = after
        self.sender_id = sender_id
        self.recipient_phone = recipient_phone
        self.choices = choices
        self.famulor_conn_id = famulor_conn_id
        self.deferrable = deferrable
        if after is None and self.mode == "reschedule":
            from famulor_provider.exceptions import FamulorValidationError

            raise FamulorValidationError("after", RESCHEDULE_NEEDS_AFTER)
        self._progress: Any = None

    # -- the awaited reply ------------------------------------------------------------------------

    def _after(self) -> dict[str, Any] | None:
        """The rendered ``after`` as a dict (``None`` when not given); checked."""
        import ast
        import json

        from famulor_provider.exceptions import FamulorValidationError
        from famulor_provider.validation import is_blank

        after = self.after
        if is_blank(after):
            return None
        if isinstance(after, str):  # rendered by a Jinja template as text
            try:
                after = json.loads(after)
            except ValueError:
                try:
                    after = ast.literal_eval(after)
                except (ValueError, SyntaxError):
                    after = None
        if (
            not isinstance(after, dict)
            or is_blank(after.get("sender_id"))
            or is_blank(after.get("recipient_phone"))
        ):
            raise FamulorValidationError(
                "after",
                "expected a single send's result (a dict with sender_id and recipient_phone), e.g. "
                f"after=send.output of SendWhatsAppTemplateOperator; got {type(self.after).__name__}",
            )
        return after

    def _target(self) -> tuple[dict[str, Any] | None, int, str]:
        """(``after``, sender id, recipient phone), checked; raises ``FamulorValidationError``."""
        from famulor_provider.exceptions import FamulorValidationError
        from famulor_provider.validation import check_id, check_phone, is_blank

        after = self._after()
        if after is None:
            if self.mode == "reschedule":
                raise FamulorValidationError("after", RESCHEDULE_NEEDS_AFTER)
            if is_blank(self.sender_id) or is_blank(self.recipient_phone):
                raise FamulorValidationError(
                    "after",
                    "give after=send.output, or sender_id and recipient_phone to name the conversation",
                )
            return None, check_id(self.sender_id, "sender_id"), check_phone(self.recipient_phone)
        return after, check_id(after["sender_id"], "after"), check_phone(after["recipient_phone"], "after")

    def _watch(self) -> Any:
        """The awaited reply, resolved on the worker: the sender's number and where "after" begins."""
        from famulor_provider.conversations.replies import ReplyWatch, baseline_from_send, sender_phone_of
        from famulor_provider.models import check_choices
        from famulor_provider.privacy import phone_for_log

        after, sender_id, phone = self._target()
        choices = check_choices(self.choices)
        sender_phone = sender_phone_of(
            self.hook.list_whatsapp_senders(status="all"), sender_id, self.famulor_conn_id
        )
        if after is not None:
            baseline = baseline_from_send(after, sender_phone)
            if baseline is None:
                self.log.warning(
                    "The send recorded no history length (its read failed): only messages that arrive "
                    "after this sensor's first read count"
                )
        else:
            conversation = self._listed(sender_phone, phone)
            baseline = 0 if conversation is None else conversation.message_count
        self.log.info(
            "Waiting for a reply of %s to sender %s (%s) after message %s",
            phone_for_log(phone),
            sender_id,
            sender_phone,
            "?" if baseline is None else baseline,
        )
        return ReplyWatch(sender_phone, phone, baseline, choices)

    def _listed(self, sender_phone: str, recipient_phone: str) -> Any:
        conversations = self.hook.list_conversations(
            whatsapp_sender_phone=sender_phone, customer_phone=recipient_phone
        )
        return next((c for c in conversations if c.is_between(sender_phone, recipient_phone)), None)

    # -- modes ------------------------------------------------------------------------------------

    def _is_deferrable(self) -> bool:
        if self.deferrable is None:  # read when the task runs, never at import
            from airflow.providers.common.compat.sdk import conf

            return conf.getboolean("operators", "default_deferrable", fallback=False)
        return bool(self.deferrable)

    def poke(self, context: Context) -> PokeReturnValue:
        from airflow.providers.common.compat.sdk import PokeReturnValue

        from famulor_provider.conversations.replies import ReplyProgress
        from famulor_provider.exceptions import FamulorConversationNotFoundError, FamulorError
        from famulor_provider.transport import is_retryable_read

        try:
            if self._progress is None:
                self._progress = ReplyProgress(self._watch())
            progress = self._progress
            conversation = self._listed(progress.watch.sender_phone, progress.watch.recipient_phone)
            reply = None
            if progress.needs_read(conversation, exact=True):
                reply = progress.on_history(self.hook.get_conversation(conversation.id))
        except FamulorError as err:
            if not (is_retryable_read(err) or isinstance(err, FamulorConversationNotFoundError)):
                raise
            self.log.warning("Famulor is unavailable for now (%s); still waiting", err)
            return PokeReturnValue(is_done=False)
        if reply is None:
            return PokeReturnValue(is_done=False)
        self._log_reply(reply)
        return PokeReturnValue(is_done=True, xcom_value=reply)

    def _log_reply(self, reply: dict[str, Any]) -> None:
        from famulor_provider.privacy import phone_for_log

        self.log.info(
            "%s replied (message %d)%s",
            phone_for_log(reply["recipient_phone"]),
            reply["message_index"],
            "" if reply["choice"] is None else f": {reply['choice']}",
        )

    def execute(self, context: Context) -> Any:
        self._progress = None  # each try starts from the send (or from its own start)
        if not self._is_deferrable():
            after = self._after()
            if (
                self.mode == "reschedule"
                and after is not None
                and not isinstance(after.get("history_lengths_after_send"), dict)
            ):
                # Reschedule mode cannot keep a baseline learnt by its first read between pokes.
                self.log.warning(
                    "The send recorded no history length and reschedule mode keeps nothing between "
                    "pokes: this try waits in place (poke mode)"
                )
                self.mode = "poke"
            return super().execute(context)
        started_at = time.time()
        after, sender_id, phone = self._target()
        from famulor_provider.models import check_choices

        choices = check_choices(self.choices)
        # Imported here: the trigger module pulls in Airflow's trigger base at DAG-parse time.
        from famulor_provider.triggers.whatsapp import WhatsAppReplyTrigger

        if after is not None:  # no request on the worker: the triggerer looks the sender up, shared
            trigger = WhatsAppReplyTrigger(
                famulor_conn_id=self.famulor_conn_id,
                recipient_phone=phone,
                sender_id=sender_id,
                history_lengths_after_send=after.get("history_lengths_after_send")
                if isinstance(after.get("history_lengths_after_send"), dict)
                else None,
                choices=choices,
                poll_interval=self.poke_interval,
                end_time=started_at + self.timeout,
            )
        else:  # only messages after this moment count: learn the history's length now
            from famulor_provider.exceptions import FamulorError
            from famulor_provider.transport import is_retryable_read

            try:
                watch = self._watch()
                sender_phone, baseline = watch.sender_phone, watch.baseline
            except FamulorError as err:
                if not is_retryable_read(err):
                    raise
                self.log.warning(
                    "Famulor is unavailable for now (%s): the trigger's first read will set where "
                    "replies begin",
                    err,
                )
                sender_phone, baseline = None, None
            trigger = WhatsAppReplyTrigger(
                famulor_conn_id=self.famulor_conn_id,
                recipient_phone=phone,
                sender_id=sender_id,
                sender_phone=sender_phone,
                baseline=baseline,
                choices=choices,
                poll_interval=self.poke_interval,
                end_time=started_at + self.timeout,
            )
        # The trigger ends itself at the sensor's end time, so every Airflow line sees an
        # AirflowSensorTimeout (2.11 would raise TaskDeferralTimeout from the deferral timeout).
        self.defer(trigger=trigger, method_name="execute_complete", timeout=timedelta(seconds=self.timeout))
        return None  # not reached: defer() raises

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger: return the reply, or raise its timeout or error."""
        from airflow.providers.common.compat.sdk import AirflowSensorTimeout, AirflowSkipException

        from famulor_provider.exceptions import FamulorError, error_from_event

        event = event or {}
        status = event.get("status")
        if status == "success":
            # The event says where the reply is; one read gets it (never in the triggerer's log).
            from famulor_provider.conversations.replies import resume_reply
            from famulor_provider.models import check_choices

            reply = resume_reply(self.hook, event, self._target()[2], check_choices(self.choices))
            self._log_reply(reply)
            return reply
        if status == "timeout":
            from famulor_provider.privacy import phone_for_log

            message = str(event.get("message") or "Sensor has timed out")
            seen = event.get("replies_seen")
            message += f" (customer {phone_for_log(self._target()[2])}" + (
                f"; {seen} other repl{'y' if seen == 1 else 'ies'})" if seen else ")"
            )
            if self.soft_fail:
                raise AirflowSkipException(message)
            raise AirflowSensorTimeout(message)
        if status == "error":
            raise error_from_event(event)
        raise FamulorError(f"WhatsAppReplyTrigger sent an unexpected event: {event!r}")


RESCHEDULE_NEEDS_AFTER = (
    "mode='reschedule' needs after=<a send's result>: Airflow clears a task's XCom at each "
    "reschedule and messages carry no time, so without the send's record the sensor cannot tell "
    "which messages came after it started. Pass after=send.output, or use mode='poke' or deferrable=True"
)
