"""Fixed-width tables of senders and templates for task logs."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from famulor_provider.models import WhatsAppSender, WhatsAppTemplate


def format_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks."""
    table = [tuple(header), *(tuple(row) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table
    )


def sender_table(senders: Iterable[WhatsAppSender]) -> str:
    """A table of senders: id, number, name, status, quality and 24 h limit."""
    return format_table(
        ("id", "phone_number", "display_name", "status", "quality", "limit/24h"),
        (
            (
                str(s.id),
                s.phone_number,
                s.display_name or "",
                s.status or "",
                s.quality_rating or "-",
                "unlimited" if s.messaging_limit is None else str(s.messaging_limit),
            )
            for s in senders
        ),
    )


def template_table(templates: Iterable[WhatsAppTemplate]) -> str:
    """A table of templates: id, name, language, category, status and variables."""
    return format_table(
        ("id", "name", "language", "category", "status", "variables"),
        (
            (
                str(t.id),
                t.name,
                t.language or "",
                t.category or "",
                t.status or "",
                ",".join(map(str, t.variables)),
            )
            for t in templates
        ),
    )
