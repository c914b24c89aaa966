"""Fixed-width tables of senders and templates for task logs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from famulor_provider.models import WhatsAppSender, WhatsAppTemplate

Column = tuple[str, "Callable[[Any], str]"]

SENDER_COLUMNS: Sequence[Column] = (
    ("id", lambda s: str(s.id)),
    ("phone_number", lambda s: s.phone_number),
    ("display_name", lambda s: s.display_name or ""),
    ("status", lambda s: s.status or ""),
    ("quality", lambda s: s.quality_rating or "-"),
    ("limit/24h", lambda s: "unlimited" if s.messaging_limit is None else str(s.messaging_limit)),
)
TEMPLATE_COLUMNS: Sequence[Column] = (
    ("id", lambda t: str(t.id)),
    ("name", lambda t: t.name),
    ("language", lambda t: t.language or ""),
    ("category", lambda t: t.category or ""),
    ("status", lambda t: t.status or ""),
    ("variables", lambda t: ",".join(map(str, t.variables))),
)


def format_table(items: Iterable[Any], columns: Sequence[Column]) -> str:
    """One row per item, columns padded to their widest cell, two spaces apart, no trailing blanks."""
    table = [[header for header, _ in columns], *([cell(item) for _, cell in columns] for item in items)]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table
    )


def sender_table(senders: Iterable[WhatsAppSender]) -> str:
    """A table of senders: id, number, name, status, quality and 24 h limit."""
    return format_table(senders, SENDER_COLUMNS)


def template_table(templates: Iterable[WhatsAppTemplate]) -> str:
    """A table of templates: id, name, language, category, status and variables."""
    return format_table(templates, TEMPLATE_COLUMNS)
