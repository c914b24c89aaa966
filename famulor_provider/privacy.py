"""Personal data in logs: phone numbers in per-recipient lines are masked unless asked otherwise.

Phone numbers are personal data. Per-recipient log lines at INFO show ``+49151****23``; the full
number is logged only at DEBUG, or at INFO when ``[famulor] log_full_phone_numbers`` is true
(``AIRFLOW__FAMULOR__LOG_FULL_PHONE_NUMBERS=true``).
"""

from __future__ import annotations

from typing import Any

KEEP_START = 6  # "+" and the country code and the first digits: enough to tell numbers apart
KEEP_END = 2


def mask_phone(phone: Any) -> str:
    """``+4915112345623`` -> ``+49151****23``; anything too short to mask shows as ``****``."""
    text = str(phone)
    if len(text) <= KEEP_START + KEEP_END:
        return "****"
    return f"{text[:KEEP_START]}****{text[-KEEP_END:]}"


def full_phone_numbers_in_logs() -> bool:
    """Whether ``[famulor] log_full_phone_numbers`` is set (read when logging, never at import)."""
    from airflow.providers.common.compat.sdk import conf

    return conf.getboolean("famulor", "log_full_phone_numbers", fallback=False)


def phone_for_log(phone: Any) -> str:
    """The phone as an INFO line may show it: masked, unless full numbers were asked for."""
    return str(phone) if full_phone_numbers_in_logs() else mask_phone(phone)
