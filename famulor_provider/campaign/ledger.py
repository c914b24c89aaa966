"""
The campaign send ledger: a durable, append-only record of what one task instance sent.

A campaign task instance (``dag_id``, ``run_id``, ``task_id``, ``map_index``; never the try
number) owns one ledger file. Every try of it reads the file first, so a retry, a manual clear
or a rerun after the worker was killed never sends a message twice.

Location
    ``ledger_path`` is a folder on a POSIX file system every worker sees, or an S3 bucket:

    - a folder (an absolute path or a ``file://`` URI; local disk on one machine, NFS, EFS or a
      shared volume otherwise): ``<ledger_path>/<dag_id>/<run_id>/<task_id>.jsonl``, or
      ``<task_id>__<map_index>.jsonl`` for a mapped task instance; one file, appended, fsynced
      and ``flock``-ed (:mod:`famulor_provider.campaign.stores.posix`). The default is
      ``$AIRFLOW_HOME/famulor/campaign-ledgers``. The file holds phone numbers: it is created
      ``0600``, and the folders created for it ``0700``, whatever the umask.
    - ``s3://bucket/prefix`` (Amazon S3 or a compatible store, through the AWS connection
      ``conn_id``): the folder ``<prefix>/<dag_id>/<run_id>/<task_id>[__<map_index>]/`` holds an
      append-only log of immutable objects ``0000000000.jsonl``, ``0000000001.jsonl`` ..., each
      one write of whole lines, each position taken with a create-only write
      (:mod:`famulor_provider.campaign.stores.objects`).

    Each part is percent-encoded (``/``, ``%``, ``:``, ``+`` ... become ``%2F``, ``%25`` ...; a
    leading ``.`` becomes ``%2E``), so no part can leave the folder and two ids never share a
    ledger. Other object stores (``gs://``, ``abfs://`` ...) are refused for now.

Two writers
    POSIX: ``flock`` keeps a second try out, where the file system carries it across hosts.
    Where it does not (NFS with ``local_lock``/``nolock``, many FUSE and SMB volumes), the
    ledger's own guard holds: before each ``attempt`` line a try checks that the file ends where
    its own last write ended, and again after writing it. S3: each ``attempt`` takes the log's
    next position with a create-only write; a position another try took fails it. Either way
    the try sends nothing more (``FamulorLedgerConflictError``, naming the other try from its
    ``try`` line).

Format (version 1)
    JSON Lines, UTF-8, append-only, one object per line, each with a ``type``:

    - ``campaign``, the first line, written when the ledger is created: ``format`` (1),
      ``dag_id``, ``run_id``, ``task_id``, ``map_index``, ``sender_id``, ``template_id``,
      ``created_at``.
    - ``try``, at the start of every try: ``try_number``, ``hostname``, ``pid``, ``sender_id``,
      ``template_id``, ``at``.
    - ``attempt``, written and fsynced *before* a recipient's send request: ``recipient_phone``
      (E.164), ``at``.
    - ``lease``, on an object log only: ``try_number``, ``hostname``, ``pid``, ``at``; written
      before a send whose attempt was written with an earlier send's more than
      :data:`~famulor_provider.campaign.runner.LEASE_SECONDS` ago, so a try that was paused
      meanwhile learns that another took over before that send (the write fails), not after it.
    - ``outcome``, written and fsynced after it (on S3 a ``sent`` outcome is written with the
      next write, at the latest at the end of the try): ``recipient_phone``, ``outcome`` (``sent``: the
      API accepted it; ``refused``: the API refused it and nothing was sent, so a later try
      sends it again; ``rejected``: the API refused this recipient for good (``INVALID_PHONE``
      ...), nothing was sent and no later try sends it; ``unknown``: it may have been sent, e.g.
      a lost answer), and when known
      ``message_id`` (the send's ``whatsapp_message_id``, the id delivery receipts name),
      ``status``, ``error_code``, ``error`` (at most 300 characters), ``at``.

    Times are UTC ISO 8601 (``2025-01-31T09:15:02.123+00:00``). An ``attempt`` with no later
    ``outcome`` for the same phone means the try stopped while that message was in flight: it
    counts as ``unknown``. A line cut short by a crash (no final newline, or not valid JSON) is
    ignored, and the next line is written on a line of its own. Readers must ignore keys they
    do not know.

Reading it
    :func:`read_campaign_ledger` yields one final record per recipient, :func:`summarize`
    counts them; :func:`iter_ledger_events` streams the raw lines. Each takes a file path or an
    ``s3://`` ledger URI (with ``conn_id``, the AWS connection).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from datetime import datetime, timezone
from hashlib import sha256
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from famulor_provider.exceptions import (
    FamulorError,
    FamulorLedgerMissingError,
    FamulorValidationError,
)
from famulor_provider.validation import is_blank, local_path

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping
    from types import TracebackType

    from famulor_provider.campaign.stores import LedgerStore

log = logging.getLogger(__name__)

LEDGER_FORMAT_VERSION = 1
SENT = "sent"
REFUSED = "refused"
REJECTED = "rejected"
UNKNOWN = "unknown"
IN_FLIGHT = "in_flight"
OUTCOMES = (SENT, REFUSED, REJECTED, UNKNOWN)
"""The values of an ``outcome`` line."""
STATES = (SENT, REFUSED, REJECTED, UNKNOWN, IN_FLIGHT)
"""The values of :attr:`CampaignLedger.state`: an outcome, or ``in_flight`` (attempt, no outcome)."""
MAX_ERROR_CHARS = 300

# One shared object per state, so that 100,000 entries of ``state`` cost one pointer each.
_STATE_OBJECTS = {state: state for state in STATES}
_MAX_NAME_PART = 180


def default_ledger_folder() -> str:
    """``$AIRFLOW_HOME/famulor/campaign-ledgers`` (``AIRFLOW_HOME`` defaults to ``~/airflow``)."""
    home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return os.path.join(home, "famulor", "campaign-ledgers")


def resolve_ledger_folder(ledger_path: str | os.PathLike[str] | None) -> str:
    """The absolute local folder that ``ledger_path`` names (``None`` or blank: the default), or
    ``s3://bucket/prefix`` without a trailing ``/``.

    :param ledger_path: an absolute folder path, a ``file://`` URI or ``s3://bucket/prefix``.
    """
    if is_blank(ledger_path):
        return default_ledger_folder()
    text = str(ledger_path).strip()
    if "://" in text:
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme == "s3":
            from famulor_provider.campaign.stores.s3 import split_s3_uri

            bucket, prefix = split_s3_uri(text)
            return f"s3://{bucket}/{prefix}".rstrip("/")
        if scheme != "file":
            raise FamulorValidationError(
                "ledger_path",
                f"{text!r}: {scheme}:// is not a store the ledger can write to. Use s3://bucket/prefix "
                "(Amazon S3 or an S3-compatible store, with ledger_conn_id), or a folder on a POSIX "
                "file system that every worker mounts at the same path (local disk for one "
                "machine; NFS, EFS or a shared volume otherwise), as a path or a file:// URI",
            )
        if parts.netloc not in ("", "localhost"):
            raise FamulorValidationError(
                "ledger_path",
                f"a file:// URI must name a local path such as file:///mnt/ledgers, got {text!r}",
            )
        text = unquote(parts.path)
    text = os.path.expanduser(text)
    if not os.path.isabs(text):
        raise FamulorValidationError(
            "ledger_path",
            f"must be an absolute path (a relative one depends on the worker's working directory), "
            f"got {text!r}",
        )
    return os.path.normpath(text)


def _name_part(value: Any, field: str) -> str:
    """``value`` as one file name: percent-encoded (one to one), never ``.``/``..``, never too long."""
    if not isinstance(value, str) or not value:
        raise FamulorValidationError(field, f"must be a non-empty string to name the ledger, got {value!r}")
    part = quote(value, safe="")
    if part.startswith("."):
        part = "%2E" + part[1:]
    if len(part) > _MAX_NAME_PART:
        part = f"{part[:150]}~{sha256(value.encode()).hexdigest()[:16]}"
    return part


def ledger_file_path(
    ledger_path: str | os.PathLike[str] | None, *, dag_id: str, run_id: str, task_id: str, map_index: int
) -> str:
    """The ledger file of one task instance, or on S3 its folder's URI ending with ``/`` (see the
    module docstring for the layout).

    :param ledger_path: the folder, a path or ``file://`` URI, or ``s3://bucket/prefix``;
        ``None`` for the default.
    :param dag_id: the task instance's DAG.
    :param run_id: its DAG run.
    :param task_id: its task.
    :param map_index: its map index (``-1`` when the task is not mapped).
    """
    if not isinstance(map_index, int) or isinstance(map_index, bool):
        raise FamulorValidationError("map_index", f"expected a whole number, got {map_index!r}")
    file_name = _name_part(task_id, "task_id")
    if map_index >= 0:
        file_name += f"__{map_index}"
    root = resolve_ledger_folder(ledger_path)
    if _is_s3(root):
        return f"{root}/{_name_part(dag_id, 'dag_id')}/{_name_part(run_id, 'run_id')}/{file_name}/"
    return os.path.join(
        root,
        _name_part(dag_id, "dag_id"),
        _name_part(run_id, "run_id"),
        file_name + ".jsonl",
    )


def decide(state: str | None, resend_unknown: bool) -> bool:
    """Whether a recipient may be sent, given its ledger state.

    ``sent`` or ``rejected`` (refused for good): never. ``unknown``/``in_flight`` (it may have
    been sent): only with ``resend_unknown``. ``refused`` (nothing was sent) or no state: yes.

    :param state: the recipient's entry in :attr:`CampaignLedger.state`, or ``None``.
    :param resend_unknown: whether to send again when an earlier send's outcome is unknown.
    """
    if state is None or state == REFUSED:
        return True
    if state in (SENT, REJECTED):
        return False
    return resend_unknown


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class CampaignLedger:
    """The open send ledger of one campaign task instance. Build it with :meth:`open`.

    Its lines live in a :class:`~famulor_provider.campaign.stores.LedgerStore` (a locked POSIX
    file, or an object log in S3), held until :meth:`close`; in memory it keeps only
    ``phone -> state`` (a shared string), about 100 bytes per recipient.
    """

    def __init__(self, store: LedgerStore) -> None:
        self.store = store
        self.path = store.location
        """Where the ledger is: a file path, or an ``s3://`` URI of its folder (ending with ``/``)."""
        self._state: dict[str, str] = {}
        self._counts = dict.fromkeys(STATES, 0)
        self._closed = False
        self.header: dict[str, Any] | None = None
        """The ``campaign`` line."""
        self.tries = 0
        """How many ``try`` lines the ledger holds, this try's included."""
        self.try_number: int | None = None
        """The try that opened it."""
        self.skipped_lines = 0
        """Lines that could not be read (cut short by a crash) and were ignored."""

    @classmethod
    def open(
        cls,
        ledger_path: str | os.PathLike[str] | None,
        *,
        dag_id: str,
        run_id: str,
        task_id: str,
        map_index: int,
        try_number: int,
        sender_id: int | None = None,
        template_id: int | None = None,
        allow_new_ledger: bool = False,
        lock_timeout: float = 5.0,
        conn_id: str = "aws_default",
    ) -> CampaignLedger:
        """Open (or create) a task instance's ledger, read it and append a ``try`` line.

        A POSIX ledger is locked; a new file is created ``0600`` and the folders it needs
        ``0700``, whatever the umask: the ledger holds phone numbers. On ``s3://`` the ``try``
        line takes the log's next position, and the store is probed once: it must refuse a
        create-only write of an object that exists.

        :param ledger_path: the folder, a path or ``file://`` URI, or ``s3://bucket/prefix``;
            ``None`` for the default.
        :param dag_id: from ``context["ti"]``.
        :param run_id: from ``context["ti"]``.
        :param task_id: from ``context["ti"]``.
        :param map_index: from ``context["ti"]`` (``-1`` when not mapped).
        :param try_number: this try; a try after the first requires the ledger to exist already.
        :param sender_id: the campaign's sender, written to the header and the ``try`` line.
        :param template_id: the campaign's template, written to the header and the ``try`` line.
        :param allow_new_ledger: create a missing ledger even when ``try_number > 1`` (only when
            no earlier try can have sent anything, e.g. they all failed before the ledger step).
        :param lock_timeout: seconds to wait for another process to release a POSIX ledger.
        :param conn_id: the Airflow AWS connection of an ``s3://`` ledger.
        :raises FamulorLedgerMissingError: a later try found no ledger.
        :raises FamulorValidationError: ``ledger_path`` cannot hold a ledger (a retry cannot fix it).
        :raises FamulorError: another process holds the ledger, or it belongs to another task.
        """
        path = ledger_file_path(
            ledger_path, dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index
        )
        if try_number > 1 and not allow_new_ledger and not _is_s3(path) and not os.path.exists(path):
            raise _missing(try_number, path)
        store = open_store(path, ledger_path, conn_id=conn_id, lock_timeout=lock_timeout)
        try:
            ledger = cls(store)
            ledger.try_number = try_number
            ledger._load()
            if try_number > 1 and not allow_new_ledger and _is_s3(path) and not ledger.tries:
                raise _missing(try_number, path)  # an empty log: no try wrote there
            identity = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": map_index}
            lines = []
            if ledger.header is None:
                header = {"type": "campaign", "format": LEDGER_FORMAT_VERSION, **identity}
                header.update(sender_id=sender_id, template_id=template_id, created_at=_now())
                lines.append(_line(header))
                ledger.header = header
            elif any(ledger.header.get(key) != value for key, value in identity.items()):
                found = {key: ledger.header.get(key) for key in identity}
                raise FamulorError(f"The campaign ledger {path} belongs to {found}, not to {identity}")
            try_line = {
                "type": "try",
                "try_number": try_number,
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "sender_id": sender_id,
                "template_id": template_id,
                "at": _now(),
            }
            lines.append(_line(try_line))
            store.append(lines)
            ledger.tries += 1
            store.probe()
        except BaseException:
            store.close()
            raise
        return ledger

    # -- reading --------------------------------------------------------------------------------

    def _load(self) -> None:
        for line in self.store.read():
            event = _parse(line)
            if event is None:
                self.skipped_lines += 1
                continue
            kind = event.get("type")
            if kind == "attempt":
                self._set(event.get("recipient_phone"), IN_FLIGHT)
            elif kind == "outcome":
                outcome = event.get("outcome")
                # An outcome this version does not know is treated as "may have been sent".
                self._set(
                    event.get("recipient_phone"),
                    _STATE_OBJECTS[outcome if outcome in OUTCOMES else UNKNOWN],
                )
            elif kind == "try":
                self.tries += 1
            elif kind == "campaign" and self.header is None:
                self.header = event
        self.skipped_lines += self.store.skipped

    def _set(self, phone: Any, state: str) -> None:
        if not isinstance(phone, str):
            return
        previous = self._state.get(phone)
        if previous is not None:
            self._counts[previous] -= 1
        self._state[phone] = state
        self._counts[state] += 1

    @property
    def state(self) -> Mapping[str, str]:
        """Each recipient phone's last state: ``sent``, ``refused``, ``rejected``, ``unknown`` or
        ``in_flight``.

        ``in_flight`` read from the ledger means an earlier try stopped mid-send: treat it as unknown.
        """
        return self._state

    def should_send(self, phone: str, resend_unknown: bool = False) -> bool:
        """Whether ``phone`` may be sent now (see :func:`decide`).

        :param phone: the normalized phone (E.164).
        :param resend_unknown: whether to send again when an earlier outcome is unknown.
        """
        return decide(self._state.get(phone), resend_unknown)

    def counts(self) -> dict[str, int]:
        """How many recipients are in each state (``sent``, ``refused``, ``rejected``, ``unknown``,
        ``in_flight``)."""
        return dict(self._counts)

    # -- writing --------------------------------------------------------------------------------

    def record_attempt(self, phone: str) -> None:
        """Durably record that ``phone`` is about to be sent. Call it before the send request.

        It fences out a second writer first. On a POSIX file nobody else may have written since
        this try's last write (the file's size against where that write ended: the ``flock``
        does not hold across hosts on every shared file system). On an object log the attempt
        takes the log's next position with a create-only write, which fails when another try
        took it: a try that was paused while another took over learns it here, before its next
        send.

        :param phone: the normalized phone (E.164), the same string every try.
        :raises FamulorLedgerConflictError: another process wrote to the ledger during this try.
        :raises FamulorError: the phone was already sent or rejected, or the ledger cannot be written.
        """
        self.record_attempts([phone])

    def record_attempts(self, phones: list[str]) -> None:
        """:meth:`record_attempt` for the sends that go out together, in one write.

        Each one is in flight from here on: a try that dies before sending them leaves them
        ``unknown``, so group no more than the sends that may be in flight at once.

        :param phones: normalized phones, none of them sent or rejected.
        """
        for phone in phones:
            state = self._state.get(phone)
            if state in (SENT, REJECTED):
                raise FamulorError(
                    f"{phone} was already {state} according to the ledger {self.path}; not sending again"
                )
        self._check_open()
        self.store.check()
        lines = [_line({"type": "attempt", "recipient_phone": phone, "at": _now()}) for phone in phones]
        self.store.append(lines)
        for phone in phones:
            self._set(phone, IN_FLIGHT)
        if self.store.fenced:
            # Someone wrote between the check and these lines: do not send them after all.
            for phone in phones:
                self.record_outcome(phone, REFUSED, error="not sent: another process wrote to the ledger")
            raise self.store.conflict()

    def confirm_owner(self) -> None:
        """Before a send whose attempt was written a while ago: prove this try still owns the log.

        On an object log this takes the next position with a ``lease`` line (with any ``sent``
        outcomes held back), which fails when another try took over meanwhile; a POSIX ledger
        checks that nobody wrote since this try's last write.

        :raises FamulorLedgerConflictError: another try wrote to the ledger.
        """
        self._check_open()
        self.store.check()
        if self.store.takes_positions:
            lease = {"type": "lease", "try_number": self.try_number, "hostname": socket.gethostname()}
            self.store.append([_line({**lease, "pid": os.getpid(), "at": _now()})])

    def record_outcome(
        self,
        phone: str,
        outcome: str,
        *,
        message_id: str | int | None = None,
        status: str | None = None,
        error_code: str | None = None,
        error: str | BaseException | None = None,
    ) -> None:
        """Durably record how a send ended.

        On an object log a ``sent`` outcome is written with the next attempt (or by
        :meth:`flush`): a try that dies first leaves that recipient ``unknown``, never sent again.

        :param phone: the normalized phone (E.164).
        :param outcome: ``sent``, ``refused`` (nothing was sent, a later try may send it),
            ``rejected`` (nothing was sent, and no try ever sends it) or ``unknown`` (it may have
            been sent).
        :param message_id: the send's ``whatsapp_message_id`` (the id delivery receipts name), when sent.
        :param status: the API's ``status`` (``queued``, ``sent``), when sent.
        :param error_code: the API's ``error_code``, when it gave one.
        :param error: the error, shortened to 300 characters.
        """
        if outcome not in OUTCOMES:
            raise FamulorValidationError("outcome", f"{outcome!r} is not one of {', '.join(OUTCOMES)}")
        event: dict[str, Any] = {"type": "outcome", "recipient_phone": phone, "outcome": outcome}
        if message_id is not None:
            event["message_id"] = message_id
        if status is not None:
            event["status"] = status
        if error_code is not None:
            event["error_code"] = error_code
        if error is not None:
            text = str(error)
            event["error"] = text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."
        event["at"] = _now()
        self._write(event, defer=outcome == SENT)
        self._set(phone, _STATE_OBJECTS[outcome])

    def _check_open(self) -> None:
        if self._closed:
            raise FamulorError(f"The campaign ledger {self.path} is closed")

    def _write(self, event: Mapping[str, Any], *, defer: bool = False) -> None:
        self._check_open()
        self.store.append([_line(event)], defer=defer)

    def flush(self) -> None:
        """Write what the store held back (``sent`` outcomes on an object log): at the end of a run."""
        self._check_open()
        self.store.flush()

    def close(self) -> None:
        """Write what is held back when it can, and release the ledger (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self.store.fenced:
                self.store.flush()
        except FamulorError as err:  # those recipients stay in flight: unknown, never sent again
            log.warning("Could not write the last outcomes to the campaign ledger %s: %s", self.path, err)
        finally:
            self.store.close()

    def __enter__(self) -> CampaignLedger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CampaignLedger({self.path!r}, {self.counts()})"


def _missing(try_number: int, path: str) -> FamulorLedgerMissingError:
    return FamulorLedgerMissingError(
        f"Try {try_number} found no campaign ledger at {path}, but an earlier try must have "
        "created it, so recipients it sent cannot be told apart and nothing is sent. Put "
        "ledger_path on storage every worker sees at the same path (an s3:// bucket; NFS, EFS, a "
        "shared volume; local disk only with a single worker). If no earlier try reached the "
        "sending step (a template error, a pod that never started), set "
        "allow_new_ledger=True and clear the task: this try may then create a new ledger."
    )


def _line(event: Mapping[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _is_s3(path: str) -> bool:
    return path[:5].lower() == "s3://"


def open_store(
    path: str, ledger_path: Any = None, *, conn_id: str = "aws_default", lock_timeout: float = 5.0
) -> LedgerStore:
    """The store of the ledger at ``path`` (from :func:`ledger_file_path`).

    :param path: a file path, or the ``s3://`` URI of the ledger's folder.
    :param ledger_path: what the user gave, for errors.
    :param conn_id: the Airflow AWS connection of an ``s3://`` ledger.
    :param lock_timeout: seconds to wait for another process to release a POSIX ledger.
    """
    if _is_s3(path):
        from famulor_provider.campaign.stores.objects import ObjectLedgerStore
        from famulor_provider.campaign.stores.s3 import S3ObjectStore, split_s3_uri

        bucket, folder = split_s3_uri(path)
        return ObjectLedgerStore(S3ObjectStore(bucket, conn_id), folder, str(ledger_path or path))
    from famulor_provider.campaign.stores.posix import PosixLedgerStore

    return PosixLedgerStore(path, ledger_path, lock_timeout)


# -- reading a ledger -----------------------------------------------------------------------------


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def iter_ledger_events(
    path: str | os.PathLike[str], *, conn_id: str = "aws_default"
) -> Iterator[dict[str, Any]]:
    """Every complete line of a ledger, in order (lines cut short by a crash are skipped).

    :param path: the ledger file, a path or ``file://`` URI; or an S3 ledger's ``s3://`` URI
        (the summary's ``ledger``).
    :param conn_id: the Airflow AWS connection for an ``s3://`` ledger.
    """
    if _is_s3(str(path)):
        from famulor_provider.campaign.stores.objects import ObjectLedgerStore
        from famulor_provider.campaign.stores.s3 import S3ObjectStore, split_s3_uri

        bucket, folder = split_s3_uri(str(path))
        store = ObjectLedgerStore(S3ObjectStore(bucket, conn_id), folder, str(path))
        try:
            for line in store.read():
                event = _parse(line)
                if event is not None:
                    yield event
        finally:
            store.close()
        return
    with open(local_path(path, "path", "a campaign ledger is a local file"), "rb") as file:
        for line in file:
            if line.endswith(b"\n"):
                event = _parse(line)
                if event is not None:
                    yield event


_RECORD_FIELDS = ("outcome", "attempts", "message_id", "status", "error_code", "error", "at")


def read_campaign_ledger(
    path: str | os.PathLike[str], *, conn_id: str = "aws_default"
) -> Iterator[dict[str, Any]]:
    """One final record per recipient, in the order of their first attempt.

    Each record: ``recipient_phone``, ``outcome`` (``sent``, ``refused``, ``rejected`` or
    ``unknown``; an attempt with no outcome is ``unknown``), ``attempts`` (send attempts over every
    try), and from the last outcome ``message_id``, ``status``, ``error_code``, ``error``, plus
    ``at`` (the last line's time).
    The file is read whole before the first record is yielded, keeping about 350 bytes per
    recipient; the records are built one at a time.

    :param path: the ledger file, a path or ``file://`` URI; or an S3 ledger's ``s3://`` URI.
    :param conn_id: the Airflow AWS connection for an ``s3://`` ledger.
    """
    # phone -> [outcome, attempts, message_id, status, error_code, error, at]: a list is a third
    # of a dict's size, and the dicts are built one at a time below.
    records: dict[str, list[Any]] = {}
    for event in iter_ledger_events(path, conn_id=conn_id):
        kind = event.get("type")
        phone = event.get("recipient_phone")
        if kind not in ("attempt", "outcome") or not isinstance(phone, str):
            continue
        record = records.get(phone)
        if record is None:
            record = records[phone] = [IN_FLIGHT, 0, None, None, None, None, None]
        if kind == "attempt":
            record[0] = IN_FLIGHT
            record[1] += 1
        else:
            outcome = event.get("outcome")
            record[0] = _STATE_OBJECTS[outcome if outcome in OUTCOMES else UNKNOWN]
            record[2:6] = [event.get(key) for key in ("message_id", "status", "error_code", "error")]
        record[6] = event.get("at")
    for phone, record in records.items():
        result = {"recipient_phone": phone, **dict(zip(_RECORD_FIELDS, record, strict=True))}
        if result["outcome"] == IN_FLIGHT:
            result["outcome"] = UNKNOWN
            result["error"] = "no outcome recorded: the try stopped while this message was in flight"
        yield result


def summarize(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Counts of final records: ``recipients``, ``sent``, ``refused``, ``rejected``, ``unknown``,
    ``attempts``.

    :param records: what :func:`read_campaign_ledger` returned.
    """
    summary = {"recipients": 0, SENT: 0, REFUSED: 0, REJECTED: 0, UNKNOWN: 0, "attempts": 0}
    for record in records:
        summary["recipients"] += 1
        summary[record["outcome"] if record["outcome"] in OUTCOMES else UNKNOWN] += 1
        summary["attempts"] += int(record.get("attempts") or 0)
    return summary
