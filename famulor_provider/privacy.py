"""Personal data in logs: phone numbers in per-recipient lines are masked unless asked otherwise.

Phone numbers are personal data. Per-recipient log lines at INFO show ``+49151****23``: the
country code, at most three digits after it, ``****`` and the last two digits, hiding at least
half of the digits after the country code. The full number is logged only at DEBUG, or at INFO
when ``[famulor] log_full_phone_numbers`` is true (``AIRFLOW__FAMULOR__LOG_FULL_PHONE_NUMBERS=true``).
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote

KEEP_END = 2  # the last two digits: enough, with the start, to tell numbers apart
KEEP_AFTER_CODE = 3  # at most this many digits after the country code stay visible
MIN_DIGITS = 6  # fewer digits after the country code (or characters of other text): all hidden
HIDDEN = "****"  # always four: the mask does not tell how many digits it hides

# ITU-T E.164 country codes of one and two digits; every other code has three.
_SHORT_CODES = frozenset(
    {
        "1", "7", "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45",
        "46", "47", "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62",
        "63", "64", "65", "66", "81", "82", "84", "86", "90", "91", "92", "93", "94", "95", "98",
    }
)  # fmt: skip
_E164 = re.compile(r"\+\d+")
_SEPARATORS = re.compile(r"[\s\-().]")


def country_code(digits: str) -> str:
    """The E.164 country code that ``digits`` (a number without its ``+``) starts with."""
    return next((digits[:n] for n in (1, 2) if digits[:n] in _SHORT_CODES), digits[:3])


def _mask(prefix: str, rest: str, keep_start: int) -> str:
    """``prefix``, the start of ``rest``, ``****`` and its last two: at least half of ``rest`` hidden."""
    if len(rest) < MIN_DIGITS:
        return HIDDEN
    shown = min(keep_start, len(rest) // 2 - KEEP_END)  # shown + KEEP_END <= half of rest
    return f"{prefix}{rest[:shown]}{HIDDEN}{rest[-KEEP_END:]}"


def mask_phone(phone: Any) -> str:
    """``+4915112345623`` -> ``+49151****23``, ``+4930901820`` -> ``+4930****20``.

    At least half of the digits after the country code are hidden and the last two stay; text
    that is not an E.164 number (an invalid input) keeps at most its first four characters and its
    last two, hiding at least half of it; anything too short to mask shows as ``****``.
    """
    text = "" if phone is None else str(phone).strip()
    compact = _SEPARATORS.sub("", text)
    if _E164.fullmatch(compact):
        code = country_code(compact[1:])
        return _mask(f"+{code}", compact[1 + len(code) :], KEEP_AFTER_CODE)
    return _mask("", text, 4)


def full_phone_numbers_in_logs() -> bool:
    """Whether ``[famulor] log_full_phone_numbers`` is set (read when logging, never at import)."""
    from airflow.providers.common.compat.sdk import conf

    return conf.getboolean("famulor", "log_full_phone_numbers", fallback=False)


def phone_for_log(phone: Any) -> str:
    """The phone as an INFO line may show it: masked, unless full numbers were asked for."""
    return str(phone) if full_phone_numbers_in_logs() else mask_phone(phone)


_PHONE_PARAM = re.compile(r"([?&][a-z_]*phone=)([^&#\s\"]*)")


def mask_phone_params(url: str) -> str:
    """``...?customer_phone=%2B4915112345678&...`` -> ``...?customer_phone=+49151****78&...``."""
    return _PHONE_PARAM.sub(lambda m: m.group(1) + mask_phone(unquote(m.group(2))), url)


class PhoneParamsLogFilter(logging.Filter):
    """Masks the phone numbers in the URLs httpx logs at INFO ("HTTP Request: GET <url> ...").

    The conversation look-ups filter by ``customer_phone`` in the query string, and Airflow 2.11's
    triggerer (where the async hook runs) logs httpx's INFO lines.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.args, tuple) or not any("phone=" in str(arg) for arg in record.args):
            return True
        if not full_phone_numbers_in_logs():
            record.args = tuple(
                mask_phone_params(str(arg)) if "phone=" in str(arg) else arg for arg in record.args
            )
        return True


def mask_phones_in_httpx_log() -> None:
    """Install :class:`PhoneParamsLogFilter` on the ``httpx`` logger, once per process."""
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, PhoneParamsLogFilter) for f in logger.filters):
        logger.addFilter(PhoneParamsLogFilter())
