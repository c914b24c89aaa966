"""
The recipients of a campaign, read as a stream and checked before anything is sent.

A source is one of:

- a list (or any iterable) of mappings with ``recipient_phone``, optional ``recipient_name``
  and optional ``variables`` (``{"1": "A-1234"}`` or named keys); an upstream task's output works;
- the JSON text of such a list, or its Python text (what ``{{ ti.xcom_pull(...) }}`` renders
  without ``render_template_as_native_obj``), turned into JSON text token by token and read by
  ``json``: about the memory of the JSON text, not the ~10 KB per row of ``ast.literal_eval``;
- the path or URI of a ``.csv``, ``.jsonl`` or ``.ndjson`` file, read through Airflow's
  ``ObjectStoragePath`` (a local path, ``file://``, ``s3://`` ... with ``conn_id``), line by line.

CSV files need a header row with a ``recipient_phone`` column; ``recipient_name`` is optional and
every other column is a template variable named by its header (``1``, ``2`` or a named
variable). Cells are stripped and empty cells are left out. JSON Lines files hold one object per
line with the same keys as the mappings.

Rows are numbered from 1: the item of a list, the data row of a CSV file (the row after the
header is row 1; blank rows are not counted), the line of a JSON Lines file (blank lines are
skipped but counted, so the number is the line an editor shows).
"""

from __future__ import annotations

import ast
import csv
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from famulor_provider.exceptions import FamulorError, FamulorValidationError
from famulor_provider.validation import (
    MAX_RECIPIENT_NAME_CHARS,
    check_choice,
    check_phone,
    check_text,
    check_variables,
    is_blank,
)

RECIPIENT_KEYS = ("recipient_phone", "recipient_name", "variables")
FILE_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
MAX_REPORTED_INVALID = 20
_MAX_ERROR_CHARS = 200
_FIELD = "recipients"


def check_recipient(row: Any) -> tuple[dict[str, Any] | None, str | None]:
    """A recipient checked and normalized, or why it is invalid.

    The recipient is ``{"recipient_phone": "+14155551234", "recipient_name": str | None,
    "variables": dict | None}``, ready for ``FamulorHook.send_whatsapp_template(**...)``.

    :param row: a mapping with ``recipient_phone``, optional ``recipient_name`` and ``variables``.
    """
    if not isinstance(row, Mapping):
        return None, f"expected an object with recipient_phone, got {type(row).__name__}"
    unknown = [key for key in row if key not in RECIPIENT_KEYS]
    if unknown:
        names = ", ".join(repr(key) for key in unknown)
        return None, f"unknown key(s) {names}; expected recipient_phone, recipient_name, variables"
    raw_phone = row.get("recipient_phone")
    try:
        phone = check_phone(raw_phone)
    except FamulorValidationError:
        # The rows' errors reach the task's log: the number masked, the row number finds it.
        from famulor_provider.privacy import mask_phone

        shown = None if raw_phone is None else mask_phone(raw_phone)
        return None, (
            f"Invalid recipient_phone: expected an E.164 phone number such as +14155551234, got {shown!r}"
        )
    try:
        name = check_text(
            row.get("recipient_name"), "recipient_name", MAX_RECIPIENT_NAME_CHARS, required=False
        )
        variables = check_variables(row.get("variables"))
    except FamulorValidationError as err:
        return None, str(err)
    return {"recipient_phone": phone, "recipient_name": name or None, "variables": variables}, None


def iter_recipients(
    source: Any, *, conn_id: str | None = None
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """Every row of ``source`` as ``(row number, recipient or None, error or None)``, streamed.

    A source that cannot be read at all (a wrong type, a missing file, a CSV file without a
    ``recipient_phone`` column) raises ``FamulorValidationError`` for ``recipients``.

    :param source: a list of mappings, its JSON text, or the path/URI of a CSV or JSON Lines file.
    :param conn_id: the Airflow connection for a remote file (``s3://`` ...).
    """
    return _iter_resolved(_resolve(source, conn_id))


class RecipientPlan:
    """The outcome of :func:`plan_recipients`: counts, and the unique valid recipients on demand.

    Iterating yields each unique valid recipient (first occurrence of a phone) in source order.
    A file is read again for that (keeping only a set of the phones seen); a list is iterated
    again; a one-shot iterator was kept in memory by the first pass. If a file changed between
    the two passes, the iteration raises ``FamulorError`` when it reaches the end.
    """

    def __init__(
        self,
        *,
        source: str,
        rows: int,
        unique: int,
        invalid: int,
        duplicates: int,
        invalid_rows: list[tuple[int, str]],
        resolved: Any,
        kept: list[dict[str, Any]] | None,
    ) -> None:
        self.source = source
        """What was read: the file's URI, or ``"a list"``."""
        self.rows = rows
        self.unique = unique
        """Valid rows with a phone not seen before: the recipients to send."""
        self.invalid = invalid
        self.duplicates = duplicates
        """Valid rows whose phone (normalized) appeared in an earlier row."""
        self.invalid_rows = invalid_rows
        """The first 20 invalid rows, as ``(row number, error)``."""
        self._resolved = resolved
        self._kept = kept

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._kept is not None:
            yield from self._kept
            return
        seen: set[str] = set()
        rows = 0
        for _number, recipient, _error in _iter_resolved(self._resolved):
            rows += 1
            if recipient is None or recipient["recipient_phone"] in seen:
                continue
            seen.add(recipient["recipient_phone"])
            yield recipient
        unique = len(seen)
        seen.clear()
        if (rows, unique) != (self.rows, self.unique):
            raise FamulorError(
                f"The recipients in {self.source} changed during the campaign: {self.rows} rows and "
                f"{self.unique} unique recipients when checked, {rows} and {unique} when sent"
            )

    def counts(self) -> dict[str, int]:
        """``rows``, ``recipients`` (unique valid), ``invalid`` and ``duplicates``."""
        return {
            "rows": self.rows,
            "recipients": self.unique,
            "invalid": self.invalid,
            "duplicates": self.duplicates,
        }

    def describe_invalid(self) -> str:
        """The invalid rows for a message: the first 20 with their numbers, and how many more."""
        shown = "; ".join(f"row {number}: {error}" for number, error in self.invalid_rows)
        more = self.invalid - len(self.invalid_rows)
        return shown + (f"; and {more} more" if more > 0 else "")

    def __repr__(self) -> str:
        return f"RecipientPlan({self.source!r}, {self.counts()})"


def plan_recipients(source: Any, invalid: str = "fail", *, conn_id: str | None = None) -> RecipientPlan:
    """Check every row of ``source`` before anything is sent: count, validate, deduplicate.

    :param source: a list of mappings, its JSON text, or the path/URI of a CSV or JSON Lines file.
    :param invalid: ``"fail"``: any invalid row raises ``FamulorValidationError`` naming the first
        20 with their row numbers; ``"skip"``: invalid rows are counted and left out.
    :param conn_id: the Airflow connection for a remote file (``s3://`` ...).
    """
    mode = check_choice("invalid_recipients", invalid, ("fail", "skip"))
    resolved = _resolve(source, conn_id)
    one_shot = resolved[0] == "rows" and iter(resolved[1]) is resolved[1]
    kept: list[dict[str, Any]] | None = [] if one_shot else None
    seen: set[str] = set()
    rows = invalid_count = duplicates = 0
    invalid_rows: list[tuple[int, str]] = []
    for number, recipient, error in _iter_resolved(resolved):
        rows += 1
        if recipient is None:
            invalid_count += 1
            if len(invalid_rows) < MAX_REPORTED_INVALID:
                text = error or "invalid"
                invalid_rows.append((number, text if len(text) <= _MAX_ERROR_CHARS else text[:197] + "..."))
            continue
        phone = recipient["recipient_phone"]
        if phone in seen:
            duplicates += 1
            continue
        seen.add(phone)
        if kept is not None:
            kept.append(recipient)
    unique = len(seen)
    # Free the phones now: a frame kept by a library's caught exception could hold them until a
    # garbage collection.
    seen.clear()
    plan = RecipientPlan(
        source=_describe(resolved),
        rows=rows,
        unique=unique,
        invalid=invalid_count,
        duplicates=duplicates,
        invalid_rows=invalid_rows,
        resolved=resolved,
        kept=kept,
    )
    if invalid_count and mode == "fail":
        raise FamulorValidationError(
            _FIELD,
            f"{invalid_count} of {rows} rows in {plan.source} are invalid, so nothing was sent: "
            f"{plan.describe_invalid()}. Fix them, or set invalid_recipients='skip' to send to the "
            "valid rows only.",
        )
    return plan


# -- sources ----------------------------------------------------------------------------------------


def _resolve(source: Any, conn_id: str | None) -> tuple[str, Any]:
    """``("rows", iterable)`` or ``("csv" | "jsonl", ObjectStoragePath)``."""
    if isinstance(source, str):
        if is_blank(source):
            raise FamulorValidationError(_FIELD, "is empty: give a list of recipients or a file path or URI")
        text = source.strip()
        if text.startswith(("[", "(")):
            return "rows", _parse_list_text(text)
        if text.startswith("{"):
            raise FamulorValidationError(
                _FIELD, "expected a list of recipients, got one object: wrap it in [...]"
            )
        return _file(text, conn_id)
    if isinstance(source, os.PathLike) or (hasattr(source, "open") and hasattr(source, "suffix")):
        return _file(source, conn_id)
    if isinstance(source, Mapping):
        raise FamulorValidationError(
            _FIELD, "expected a list of recipients, got one mapping: wrap it in a list"
        )
    if isinstance(source, Iterable) and not isinstance(source, (bytes, bytearray)):
        return "rows", source
    raise FamulorValidationError(
        _FIELD,
        f"expected a list of recipients or a .csv/.jsonl file path or URI, got {type(source).__name__}",
    )


# One token of Python's literal text of a list: a string (no bytes, no triple quotes), a number,
# True/False/None, punctuation, or anything else (refused).
_PYTHON_TOKEN = re.compile(
    r"""\s+
    |(?P<string>[uU]?(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"))
    |(?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    |(?P<name>True|False|None)\b
    |(?P<open>[\[({])
    |(?P<close>[\])}])
    |(?P<punct>[,:])
    |(?P<bad>.)""",
    re.VERBOSE | re.DOTALL,
)
_JSON_NAMES = {"True": "true", "False": "false", "None": "null"}
_NATIVE_WAYS = (
    "pass the list natively: set render_template_as_native_obj=True on the DAG, or pass the "
    "upstream task's output (task.output / an XComArg) as recipients instead of a template; or "
    "write the recipients to a .jsonl/.csv file and pass its path"
)


def _python_text_as_json(text: str) -> str:
    """Python's literal text of a list (``repr``) as JSON text, without building an AST.

    ``ast.literal_eval`` keeps a syntax tree of the whole text (about 10 KB per recipient row);
    this keeps the text, its JSON twin and one token at a time.
    """
    pieces: list[str] = []
    last = ""
    groups: list[list[int]] = []  # per open bracket: [its piece's index, commas inside]
    for match in _PYTHON_TOKEN.finditer(text):
        kind = match.lastgroup
        if kind is None:  # whitespace
            continue
        token = match.group()
        if kind == "string":
            body = token[2:-1] if token[0] in "uU" else token[1:-1]
            if "\\" in body or '"' in body:
                token = json.dumps(ast.literal_eval(token), ensure_ascii=False)
            else:
                token = f'"{body}"'
        elif kind == "name":
            token = _JSON_NAMES[token]
        elif kind == "open":
            groups.append([len(pieces), 0])
            token = "{" if token == "{" else "["
        elif kind == "close":
            if not groups:
                raise ValueError(f"unbalanced {token!r} at character {match.start()}")
            start, commas = groups.pop()
            if match.group() == ")" and not commas and last != "[":
                pieces[start] = ""  # (x) is x, not a tuple
                token = ""
            else:
                if last == ",":  # a trailing comma: [1, 2,] or a one-tuple (x,)
                    pieces.pop()
                token = "}" if token == "}" else "]"
        elif kind == "punct" and token == "," and groups:
            groups[-1][1] += 1
        elif kind == "bad":
            raise ValueError(f"unexpected {token!r} at character {match.start()}")
        pieces.append(token)
        last = token
    return "".join(pieces)


def _parse_list_text(text: str) -> list[Any]:
    try:
        value = json.loads(text)
    except ValueError:
        try:  # Python's text of a list, as a template renders it
            value = json.loads(_python_text_as_json(text), strict=False)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
            raise FamulorValidationError(
                _FIELD,
                f"is text that is neither a list's JSON nor its Python literal ({err}), nor a "
                f".csv/.jsonl path. Better, {_NATIVE_WAYS}",
            ) from None
    if not isinstance(value, (list, tuple)):
        raise FamulorValidationError(_FIELD, f"expected a list of recipients, got {type(value).__name__}")
    return value if isinstance(value, list) else list(value)


def _file(location: Any, conn_id: str | None) -> tuple[str, Any]:
    text = str(location)
    kind = FILE_FORMATS.get(os.path.splitext(text.rstrip("/"))[1].lower())
    if kind is None:
        raise FamulorValidationError(
            _FIELD,
            f"{text!r} is not a .csv, .jsonl or .ndjson file (nor a list of recipients or its JSON text)",
        )
    # Imported here: Airflow's object storage is costly to import, and only file sources need it.
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    if isinstance(location, ObjectStoragePath):
        return kind, location
    return kind, ObjectStoragePath(text, conn_id=conn_id) if conn_id else ObjectStoragePath(text)


def _describe(resolved: tuple[str, Any]) -> str:
    kind, obj = resolved
    return "the list" if kind == "rows" else str(obj)


def _iter_resolved(resolved: tuple[str, Any]) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    kind, obj = resolved
    if kind == "rows":
        for number, row in enumerate(obj, 1):
            recipient, error = check_recipient(row)
            yield number, recipient, error
        return
    try:
        # newline="": the csv module's rule; JSON Lines tolerates the \r it may leave. utf-8-sig
        # drops the byte-order mark spreadsheet programs write.
        file = obj.open("r", encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise FamulorValidationError(_FIELD, f"{obj} does not exist") from None
    with file:
        # Airflow 2.11's file wrapper has no __iter__: read line by line through readline.
        lines: Iterator[str] = iter(file.readline, "")
        if kind == "csv":
            yield from _csv_rows(lines, str(obj))
        else:
            yield from _jsonl_rows(lines)


def _csv_rows(lines: Iterator[str], where: str) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    reader = csv.reader(lines)
    try:
        header = next((cells for cells in reader if any(cell.strip() for cell in cells)), None)
        if header is None:
            raise FamulorValidationError(
                _FIELD, f"{where} is empty: it needs a header row with recipient_phone"
            )
        names = [cell.strip() for cell in header]
        if "recipient_phone" not in names:
            raise FamulorValidationError(
                _FIELD, f"{where} has no recipient_phone column in its header row, found {names}"
            )
        repeated = sorted({name for name in names if name and names.count(name) > 1})
        if repeated:
            raise FamulorValidationError(
                _FIELD, f"{where} repeats the column(s) {repeated} in its header row"
            )
        width = len(names)
        phone_at = names.index("recipient_phone")
        name_at = names.index("recipient_name") if "recipient_name" in names else None
        variable_columns = [
            (at, name) for at, name in enumerate(names) if name and name not in RECIPIENT_KEYS[:2]
        ]
        unnamed = [at for at, name in enumerate(names) if not name]
        number = 0
        for raw in reader:
            cells = [cell.strip() for cell in raw]
            if not any(cells):
                continue
            number += 1
            if len(cells) > width:
                yield number, None, f"has {len(cells)} cells, the header has {width} columns"
                continue
            cells.extend([""] * (width - len(cells)))
            if any(cells[at] for at in unnamed):
                yield number, None, "has a value in a column with no header"
                continue
            row: dict[str, Any] = {"recipient_phone": cells[phone_at]}
            if name_at is not None and cells[name_at]:
                row["recipient_name"] = cells[name_at]
            variables = {name: cells[at] for at, name in variable_columns if cells[at]}
            if variables:
                row["variables"] = variables
            recipient, error = check_recipient(row)
            yield number, recipient, error
    except csv.Error as err:
        raise FamulorValidationError(
            _FIELD, f"{where}: cannot read CSV near line {reader.line_num}: {err}"
        ) from None


def _jsonl_rows(lines: Iterator[str]) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            yield number, None, f"not valid JSON: {err}"
            continue
        recipient, error = check_recipient(row)
        yield number, recipient, error
