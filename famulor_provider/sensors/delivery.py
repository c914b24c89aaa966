"""``WhatsAppDeliverySensor``: wait until sent messages are delivered (or read), from their
delivery receipts (Airflow 3.1+, the provider's webhook receiver on the api-server).

Importing this module stays cheap: Airflow's asset classes and the ledger reader are imported
when the sensor is built or runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseSensorOperator

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from airflow.providers.common.compat.sdk import Context, PokeReturnValue

    from famulor_provider.webhooks.receipts import ReceiptBook

DEFAULT_POKE_INTERVAL = 60.0
MAX_LISTED = 1000
"""At most this many messages are listed in the XCom result (failures first); counts cover all."""


class WhatsAppDeliverySensor(BaseSensorOperator):
    """
    Wait until sent WhatsApp messages reach ``delivered`` (or ``read``), from Famulor's delivery
    receipts: the events of ``message_status_asset(famulor_conn_id)``, which the provider's
    webhook receiver records (Airflow 3.1+).

    Give the messages as ``after`` (a send operator's result, ``after=send.output``, or a list of
    them, e.g. a mapped send's ``output``) or as ``campaign`` (the campaign operator's result, or
    its ledger's path: every recipient it ``sent``). A ``failed`` or ``undelivered`` receipt ends
    the sensor at once with :class:`~famulor_provider.exceptions.FamulorDeliveryFailedError` (the
    provider's error code and description; no retry), unless ``fail_fast=False``: then a failed
    message counts as settled and the sensor succeeds once every message is settled. ``timeout``
    and ``soft_fail`` work as for any sensor (``soft_fail``: skipped instead of failed).

    Runs in ``reschedule`` mode by default: between pokes it holds no worker slot. It is not
    deferrable: a trigger cannot read asset events. Each poke reads the receipts recorded since
    the earliest send (5 minutes earlier, for clock differences), in pages of 1,000; in ``poke``
    mode later pokes read only what is new (Airflow 3.1 cannot filter by time: each poke reads
    every event of the asset).

    Returns (XCom) ``until``, ``messages``, ``counts`` (per status, ``no_receipt`` included) and
    ``receipts``: per message ``whatsapp_message_id``, ``recipient`` (the number masked, e.g.
    ``+49151****23``), ``status``, ``error_code`` and ``at`` (the provider's time), failures
    first, at most 1,000 (``listed`` says how many). No names, no texts, no full numbers.

    :param after: one send's result dict, or a list of them.
    :param campaign: the campaign operator's result (its ``ledger``), or the ledger's path or URI.
    :param until: ``delivered`` (default; ``read`` counts too) or ``read`` (only fires where the
        recipient allows read receipts).
    :param fail_fast: end at the first failed message (default), or wait for every message.
    :param since: the earliest time (datetime or ISO 8601) a receipt can have; default: the
        earliest send in the ledger, or the DAG run's start for ``after``.
    :param famulor_conn_id: the Famulor connection whose receiver records the receipts (names
        the asset, so it is not templated).
    """

    template_fields: Sequence[str] = ("after", "campaign", "until", "fail_fast", "since")
    ui_color = "#dcf8c6"

    def __init__(
        self,
        *,
        after: Any = None,
        campaign: Any = None,
        until: str = "delivered",
        fail_fast: bool = True,
        since: Any = None,
        famulor_conn_id: str = "famulor_default",
        **kwargs: Any,
    ) -> None:
        from famulor_provider.webhooks.assets import message_status_asset
        from famulor_provider.webhooks.receipts import require_airflow_3_1

        require_airflow_3_1(type(self).__name__)
        if (after is None) == (campaign is None):
            raise ValueError(
                f"{type(self).__name__}: give the messages as exactly one of after= (a send's result) "
                "or campaign= (the campaign's result or ledger)"
            )
        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("poke_interval", DEFAULT_POKE_INTERVAL)
        super().__init__(**kwargs)
        self.after = after
        self.campaign = campaign
        self.until = until
        self.fail_fast = fail_fast
        self.since = since
        self.famulor_conn_id = famulor_conn_id
        self.asset = message_status_asset(famulor_conn_id)
        self.inlets = [*(self.inlets or []), self.asset]
        self._book: ReceiptBook | None = None
        self._targets: tuple[dict[str, tuple[Any, str]], datetime] | None = None

    def poke(self, context: Context) -> PokeReturnValue | bool:
        from airflow.providers.common.compat.sdk import PokeReturnValue

        from famulor_provider.validation import check_choice, check_flag
        from famulor_provider.webhooks.receipts import UNTIL_CHOICES, ReceiptBook

        until = check_choice("until", self.until, UNTIL_CHOICES)
        fail_fast = check_flag(self.fail_fast, "fail_fast")
        if self._targets is None:  # kept across pokes in poke mode; a reschedule starts anew
            self._targets = awaited_messages(self.after, self.campaign, self.since, context)
        targets, since = self._targets
        if self._book is None:
            self._book = ReceiptBook(targets)
        book = self._book
        read = book.read(context["inlet_events"][self.asset], since)

        failed = [key for key in targets if (r := book.receipts.get(key)) is not None and r.failed]
        if failed and fail_fast:
            raise _failure(book, targets, failed)
        settled = sum(
            1
            for key in targets
            if (r := book.receipts.get(key)) is not None and (r.failed or r.reached(until))
        )
        self.log.info(
            "%d of %d message(s) %s%s (%d receipt event(s) read, %d duplicate(s) skipped)",
            settled,
            len(targets),
            until if until == "read" else "delivered or read",
            "" if fail_fast else f" or failed ({len(failed)} failed)",
            read,
            book.duplicates,
        )
        if settled < len(targets):
            return False
        return PokeReturnValue(is_done=True, xcom_value=delivery_result(book, targets, until))


def awaited_messages(
    after: Any, campaign: Any, since: Any, context: Context
) -> tuple[dict[str, tuple[Any, str]], datetime]:
    """The awaited messages (``{key: (whatsapp_message_id, masked recipient)}``) and the time
    their receipts start from.

    :param after: one send's result dict or a list of them.
    :param campaign: the campaign's result dict (``ledger``) or its ledger path.
    :param since: an explicit start time, or ``None``.
    :param context: the task's context (the DAG run's times, for ``after``).
    """
    from famulor_provider.campaign.ledger import SENT, read_campaign_ledger
    from famulor_provider.exceptions import FamulorValidationError
    from famulor_provider.privacy import mask_phone
    from famulor_provider.validation import is_blank
    from famulor_provider.webhooks.receipts import message_key, since_for

    targets: dict[str, tuple[Any, str]] = {}
    times: list[Any] = []
    if after is not None:
        sends = [after] if isinstance(after, dict) else list(after)
        for send in sends:
            if send is None:  # a skipped mapped send
                continue
            key = message_key(send.get("whatsapp_message_id")) if isinstance(send, dict) else None
            if key is None:
                raise FamulorValidationError(
                    "after",
                    "expected a send's result (a dict with whatsapp_message_id, e.g. send.output) or a "
                    f"list of them; got {type(send).__name__} without a whatsapp_message_id",
                )
            targets[key] = (send["whatsapp_message_id"], mask_phone(send.get("recipient_phone") or ""))
        dag_run = context.get("dag_run")
        times += [getattr(dag_run, name, None) for name in ("run_after", "start_date", "queued_at")]
    else:
        path = campaign.get("ledger") if isinstance(campaign, dict) else campaign
        if is_blank(path):
            raise FamulorValidationError(
                "campaign", "expected the campaign operator's result (with its ledger) or the ledger's path"
            )
        missing = 0
        for record in read_campaign_ledger(str(path)):
            if record["outcome"] != SENT:
                continue
            key = message_key(record.get("message_id"))
            if key is None:
                missing += 1
                continue
            targets[key] = (record["message_id"], mask_phone(record["recipient_phone"]))
            times.append(record.get("at"))
        if missing:
            raise FamulorValidationError(
                "campaign",
                f"{missing} sent recipient(s) in {path} have no message_id (a ledger written before "
                "campaigns recorded the whatsapp_message_id): their receipts cannot be matched",
            )
    if not is_blank(since):
        times = [since]
    return targets, since_for(times)


def delivery_result(book: ReceiptBook, targets: dict[str, tuple[Any, str]], until: str) -> dict[str, Any]:
    """The sensor's XCom: counts per status and the listed messages (masked numbers only)."""
    from famulor_provider.webhooks.receipts import NO_RECEIPT, status_counts

    rows = []
    for key, (message_id, recipient) in targets.items():
        receipt = book.receipts.get(key)
        rows.append(
            {
                "whatsapp_message_id": message_id,
                "recipient": recipient,
                "status": receipt.status if receipt else NO_RECEIPT,
                "error_code": receipt.error_code if receipt else None,
                "at": receipt.at if receipt else None,
            }
        )
    rows.sort(key=lambda row: row["status"] not in ("failed", "undelivered"))
    return {
        "until": until,
        "messages": len(targets),
        "counts": status_counts(row["status"] for row in rows),
        "receipts": rows[:MAX_LISTED],
        "listed": min(len(rows), MAX_LISTED),
    }


def _failure(book: ReceiptBook, targets: dict[str, tuple[Any, str]], failed: list[str]) -> Exception:
    from famulor_provider.exceptions import FamulorDeliveryFailedError

    first = failed[0]
    receipt = book.receipts[first]
    message_id, recipient = targets[first]
    more = f" ({len(failed)} of {len(targets)} awaited messages failed)" if len(failed) > 1 else ""
    return FamulorDeliveryFailedError(
        f"WhatsApp message {message_id} to {recipient} was not delivered: {receipt.description()}{more}",
        whatsapp_message_id=message_id,
        status=receipt.status,
        error_code=receipt.error_code,
        error_description=receipt.error_description or receipt.error_message,
        recipient=recipient,
        failed=len(failed),
    )
