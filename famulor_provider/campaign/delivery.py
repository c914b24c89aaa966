"""A campaign's delivery report: its ledger (who got which ``whatsapp_message_id``) joined with
the delivery receipts, and the recipients to fall back on as a recipients file.

The file is JSON Lines with the campaign's recipient keys only (``recipient_phone``, and
``recipient_name`` / ``variables`` when the campaign's recipients are given), so
``SendWhatsAppCampaignOperator(recipients=<the file>)`` takes it as it is. It holds phone
numbers: it is written ``0600`` in folders created ``0700``, replaced atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from famulor_provider.campaign.ledger import OUTCOMES, SENT
from famulor_provider.webhooks.receipts import (
    FAILED,
    NO_RECEIPT,
    STATUSES,
    UNDELIVERED,
    ReceiptBook,
    message_key,
    status_counts,
)
from famulor_provider.webhooks.receipts import (
    SENT as SENT_RECEIPT,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

FALLBACK_DEFAULT = (FAILED, UNDELIVERED, SENT_RECEIPT, NO_RECEIPT)
"""Fall back on recipients whose message failed, or was never reported delivered."""
FALLBACK_CHOICES = (*STATUSES, NO_RECEIPT)


def delivery_statuses(records: Iterable[Mapping[str, Any]], book: ReceiptBook) -> dict[str, str]:
    """``{recipient_phone: status}`` for every recipient the ledger records as ``sent``: the
    latest receipt's status, or ``no_receipt``.

    :param records: :func:`~famulor_provider.campaign.ledger.read_campaign_ledger`'s records.
    :param book: the receipts, folded for these records' ``message_id``.
    """
    statuses = {}
    for record in records:
        if record["outcome"] == SENT:
            receipt = book.get(record.get("message_id"))
            statuses[record["recipient_phone"]] = receipt.status if receipt else NO_RECEIPT
    return statuses


def sent_message_ids(records: Iterable[Mapping[str, Any]]) -> list[Any]:
    """The ``message_id`` (= ``whatsapp_message_id``) of every ``sent`` record that has one."""
    return [r["message_id"] for r in records if r["outcome"] == SENT and message_key(r.get("message_id"))]


def summarize_delivery(
    records: Iterable[Mapping[str, Any]], statuses: Mapping[str, str], book: ReceiptBook
) -> dict[str, Any]:
    """The report's counts: ``recipients`` (in the ledger), ``statuses`` (per receipt status of the
    sent ones, ``no_receipt`` included), ``not_sent`` (the ledger's other outcomes) and
    ``error_codes`` (of the failed ones).
    """
    not_sent: Counter[str] = Counter()
    recipients = 0
    for record in records:
        recipients += 1
        if record["outcome"] != SENT:
            not_sent[record["outcome"] if record["outcome"] in OUTCOMES else "unknown"] += 1
    codes: Counter[str] = Counter()
    for receipt in book.receipts.values():
        if receipt.failed:
            codes[str(receipt.error_code)] += 1
    return {
        "recipients": recipients,
        "statuses": status_counts(statuses.values()),
        "not_sent": {outcome: not_sent[outcome] for outcome in OUTCOMES if outcome != SENT},
        "error_codes": dict(codes),
    }


def fallback_rows(
    phones: Iterable[str], recipients: Any = None, *, conn_id: str | None = None
) -> list[dict[str, Any]]:
    """The fallback recipients as campaign rows: from ``recipients`` (the campaign's source, so
    names and variables carry over; first row of each phone) when given, else the phones alone.

    :param phones: the normalized phones to fall back on, in ledger order.
    :param recipients: the campaign's recipients source (a list or a file's path/URI), or ``None``.
    :param conn_id: the connection of a remote recipients file.
    """
    wanted = list(dict.fromkeys(phones))
    if recipients is None:
        return [{"recipient_phone": phone} for phone in wanted]
    from famulor_provider.campaign.recipients import iter_recipients

    found: dict[str, dict[str, Any]] = {}
    pending = set(wanted)
    for _number, recipient, _error in iter_recipients(recipients, conn_id=conn_id):
        if recipient is not None and recipient["recipient_phone"] in pending:
            pending.discard(recipient["recipient_phone"])
            found[recipient["recipient_phone"]] = {k: v for k, v in recipient.items() if v is not None}
    return [found.get(phone, {"recipient_phone": phone}) for phone in wanted]


def default_report_path(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """``$AIRFLOW_HOME/famulor/delivery-reports/<dag_id>/<run_id>/<task_id>[__<map_index>].jsonl``,
    each part percent-encoded (no part can leave the folder)."""
    home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    name = task_id if map_index < 0 else f"{task_id}__{map_index}"
    dag, run, task = (_name_part(part) for part in (dag_id, run_id, name))
    return os.path.join(home, "famulor", "delivery-reports", dag, run, f"{task}.jsonl")


def _name_part(value: str) -> str:
    text = quote(str(value), safe="")
    return "%2E" + text[1:] if text.startswith(".") else text


def write_recipients_file(path: str, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write ``rows`` as JSON Lines to the local ``path`` (``0600``, atomically); returns the count.

    :param path: an absolute local path (or ``file://`` URI) ending in ``.jsonl``.
    """
    from famulor_provider.exceptions import FamulorValidationError
    from famulor_provider.validation import local_path

    text = local_path(path, "output_path", "a local path or file:// URI")
    if not os.path.isabs(text) or not text.endswith((".jsonl", ".ndjson")):
        raise FamulorValidationError(
            "output_path", f"an absolute path ending in .jsonl (the campaign reads it by that), got {text!r}"
        )
    folder = os.path.dirname(text)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    count = 0
    fd, partial = tempfile.mkstemp(dir=folder, prefix=".report-", suffix=".tmp")  # mkstemp: 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            for row in rows:
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, text)
    except BaseException:
        os.unlink(partial)
        raise
    return count
