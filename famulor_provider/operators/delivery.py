"""``WhatsAppDeliveryReportOperator``: what a campaign's messages became, and whom to fall back on
(Airflow 3.1+, the provider's webhook receiver on the api-server)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.providers.common.compat.sdk import Context

MAX_LISTED_FAILURES = 100


class WhatsAppDeliveryReportOperator(BaseOperator):
    """
    Report a campaign's delivery from its ledger and the delivery receipts
    (``message_status_asset(famulor_conn_id)``), and write the recipients to fall back on as a
    recipients file that ``SendWhatsAppCampaignOperator(recipients=...)`` takes as it is.

    Each recipient the ledger records as ``sent`` gets the status of its latest receipt
    (``sent``, ``delivered``, ``read``, ``failed``, ``undelivered``) or ``no_receipt``; recipients
    whose status is in ``fallback_statuses`` (default: failed, undelivered, still only sent, no
    receipt) go to the file, with their name and variables when ``recipients`` (the campaign's
    own recipients source) is given. Recipients the campaign did not send (rejected, refused,
    unknown) are counted under ``not_sent`` and are not in the file: their fate is the campaign's.
    Run it when the receipts had time to arrive (after a :class:`WhatsAppDeliverySensor` with
    ``fail_fast=False``, or at a later time): a report reads what has arrived so far.

    Returns (XCom) ``recipients``, ``statuses`` (counts), ``not_sent`` (counts), ``error_codes``
    (counts of the failures' provider codes), ``failed`` (up to 100 failures: masked number,
    ``whatsapp_message_id``, status, code), ``duplicates`` (receipts skipped because their
    ``dedupe_key`` was seen already), ``fallback`` (how many rows the file has) and
    ``fallback_path``. Full numbers are only in the file (``0600``).

    :param campaign: the campaign operator's result (its ``ledger``) or the ledger's path/URI.
    :param recipients: the campaign's recipients (list, or CSV / JSON Lines path or URI), to carry
        names and variables into the file; ``None``: phone numbers only.
    :param output_path: the file to write (absolute, ``.jsonl``); default
        ``$AIRFLOW_HOME/famulor/delivery-reports/<dag_id>/<run_id>/<task_id>.jsonl``.
    :param fallback_statuses: the statuses whose recipients go to the file.
    :param since: the earliest time a receipt can have; default: the ledger's earliest send.
    :param recipients_conn_id: the Airflow connection of a remote ``recipients`` file.
    :param famulor_conn_id: the Famulor connection whose receiver records the receipts (names the
        asset, so it is not templated).
    """

    template_fields: Sequence[str] = (
        "campaign",
        "recipients",
        "output_path",
        "fallback_statuses",
        "since",
        "recipients_conn_id",
    )
    ui_color = "#dcf8c6"

    def __init__(
        self,
        *,
        campaign: Any,
        recipients: Any = None,
        output_path: str | None = None,
        fallback_statuses: Sequence[str] | None = None,
        since: Any = None,
        recipients_conn_id: str | None = None,
        famulor_conn_id: str = "famulor_default",
        **kwargs: Any,
    ) -> None:
        from famulor_provider.webhooks.assets import message_status_asset
        from famulor_provider.webhooks.receipts import require_airflow_3_1

        require_airflow_3_1(type(self).__name__)
        super().__init__(**kwargs)
        self.campaign = campaign
        self.recipients = recipients
        self.output_path = output_path
        self.fallback_statuses = fallback_statuses
        self.since = since
        self.recipients_conn_id = recipients_conn_id
        self.famulor_conn_id = famulor_conn_id
        self.asset = message_status_asset(famulor_conn_id)
        self.inlets = [*(self.inlets or []), self.asset]

    def execute(self, context: Context) -> dict[str, Any]:
        from famulor_provider.campaign.delivery import (
            FALLBACK_CHOICES,
            FALLBACK_DEFAULT,
            default_report_path,
            delivery_statuses,
            fallback_rows,
            sent_message_ids,
            summarize_delivery,
            write_recipients_file,
        )
        from famulor_provider.campaign.ledger import read_campaign_ledger
        from famulor_provider.exceptions import FamulorValidationError
        from famulor_provider.privacy import mask_phone
        from famulor_provider.validation import as_list, check_choice, is_blank
        from famulor_provider.webhooks.receipts import FAILURES, ReceiptBook, since_for

        ledger = self.campaign.get("ledger") if isinstance(self.campaign, dict) else self.campaign
        if is_blank(ledger):
            raise FamulorValidationError(
                "campaign", "expected the campaign operator's result (with its ledger) or the ledger's path"
            )
        wanted = as_list(self.fallback_statuses, "fallback_statuses")
        fallback_on = {
            check_choice("fallback_statuses", s, FALLBACK_CHOICES) for s in (wanted or FALLBACK_DEFAULT)
        }
        records = list(read_campaign_ledger(str(ledger)))
        ids = sent_message_ids(records)
        book = ReceiptBook(ids)
        times = (
            [self.since]
            if not is_blank(self.since)
            else [r.get("at") for r in records if r["outcome"] == "sent"]
        )
        read = book.read(context["inlet_events"][self.asset], since_for(times))
        statuses = delivery_statuses(records, book)
        report = summarize_delivery(records, statuses, book)

        failed: list[dict[str, Any]] = []
        by_phone = {r["recipient_phone"]: r for r in records}
        for phone, status in statuses.items():
            if status in FAILURES and len(failed) < MAX_LISTED_FAILURES:
                receipt = book.get(by_phone[phone].get("message_id"))
                failed.append(
                    {
                        "whatsapp_message_id": by_phone[phone].get("message_id"),
                        "recipient": mask_phone(phone),
                        "status": status,
                        "error_code": receipt.error_code if receipt else None,
                    }
                )
        ti = context["ti"]
        path = (
            default_report_path(
                ti.dag_id, ti.run_id, ti.task_id, ti.map_index if ti.map_index is not None else -1
            )
            if is_blank(self.output_path)
            else str(self.output_path)
        )
        phones = [phone for phone, status in statuses.items() if status in fallback_on]
        rows = fallback_rows(
            phones,
            None if is_blank(self.recipients) else self.recipients,
            conn_id=None if is_blank(self.recipients_conn_id) else str(self.recipients_conn_id),
        )
        written = write_recipients_file(path, rows)
        self.log.info(
            "Delivery of %d recipient(s): %s; not sent: %s; error codes: %s (%d receipt event(s) read, "
            "%d duplicate(s) skipped). %d recipient(s) to fall back on (%s) written to %s",
            report["recipients"],
            report["statuses"],
            report["not_sent"],
            report["error_codes"] or "none",
            read,
            book.duplicates,
            written,
            ", ".join(sorted(fallback_on)),
            path,
        )
        return {
            **report,
            "failed": failed,
            "duplicates": book.duplicates,
            "fallback": written,
            "fallback_path": path,
        }
