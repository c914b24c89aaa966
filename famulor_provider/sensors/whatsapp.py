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
