"""Argument checks shared by the hook, the operators, the sensor and the notifier.

Every check takes the (possibly template-rendered) value and the argument's name, and raises a
``FamulorValidationError`` naming the argument and what to fix. Nothing here sends a request.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from famulor_provider.exceptions import FamulorValidationError

E164_PHONE = re.compile(r"^\+[1-9]\d{6,14}$")
MAX_MESSAGE_CHARS = 4096
MAX_RECIPIENT_NAME_CHARS = 255


def is_blank(value: Any) -> bool:
    """Whether a (rendered) argument means "not given": ``None``, ``""``, ``"None"`` or ``"null"``.

    A template that renders ``None`` gives the text ``"None"``; an unset param gives ``""``.
    """
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null"))


def local_path(value: Any, name: str, what: str) -> str:
    """``value`` as a local path: a path as it is, a ``file://`` URI's path unquoted.

    :param value: a path or URI.
    :param name: the argument, for the error.
    :param what: what a valid value is, for the error (``"a local path or file:// URI"``).
    :raises FamulorValidationError: any other URI.
    """
    text = str(value)
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme.lower() != "file":
            raise FamulorValidationError(name, f"{what}, got {text!r}")
        text = unquote(parts.path)
    return text


def normalize_phone(phone: str) -> str:
    """Drop the separators people write in phone numbers: ``+1 (415) 555-1234`` -> ``+14155551234``."""
    return re.sub(r"[\s().-]", "", phone)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices`` (strings compared case-insensitively), else an error.

    :param name: the argument's name, for the error.
    :param value: the value to check.
    :param choices: the allowed values.
    """
    if isinstance(value, str):
        value = value.strip().lower()
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise FamulorValidationError(name, f"{value!r} is not one of {allowed}")
    return value


def check_optional_int(value: Any, name: str, *, minimum: int) -> int | None:
    """A whole number of at least ``minimum`` (digit strings accepted), or ``None`` when blank.

    :param value: the value to check.
    :param name: the argument's name, for the error.
    :param minimum: the smallest value allowed.
    """
    if is_blank(value):
        return None
    if isinstance(value, bool):
        raise FamulorValidationError(name, f"expected a whole number, got {value!r}")
    try:
        number = value if isinstance(value, int) else int(str(value).strip())
    except ValueError:
        raise FamulorValidationError(name, f"expected a whole number, got {value!r}") from None
    if number < minimum:
        raise FamulorValidationError(name, f"must be at least {minimum}, got {number}")
    return number


def check_positive_number(value: Any, name: str) -> float | None:
    """A number above 0 (rendered text is fine), or ``None`` when blank.

    :param value: the value to check.
    :param name: the argument's name, for the error.
    """
    if is_blank(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FamulorValidationError(name, f"expected a number, got {value!r}") from None
    if isinstance(value, bool) or not number > 0:
        raise FamulorValidationError(name, f"must be more than 0, got {value!r}")
    return number


def check_flag(value: Any, name: str) -> bool:
    """True or false, also as text: ``"true"``/``"false"``, ``"1"``/``"0"``, ``"y"``/``"n"`` ...

    :param value: the value to check.
    :param name: the argument's name, for the error.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "y", "on"):  # "y": Airflow 2.11's form sends a ticked box so
        return True
    if text in ("false", "0", "no", "n", "off"):
        return False
    raise FamulorValidationError(name, f"expected true or false, got {value!r}")


def check_id(value: Any, name: str) -> int:
    """A positive integer id (digit strings, as templates render them, are accepted).

    :param value: the value to check.
    :param name: the argument's name, for the error.
    """
    number = check_optional_int(value, name, minimum=1)
    if number is None:
        raise FamulorValidationError(name, f"an id must be a positive whole number, got {value!r}")
    return number


def check_phone(value: Any, name: str = "recipient_phone") -> str:
    """An E.164 phone number; spaces, dots, dashes and parentheses are dropped first.

    :param value: the value to check.
    :param name: the argument's name, for the error.
    """
    phone = normalize_phone(value.strip()) if isinstance(value, str) else None
    if phone is None or not E164_PHONE.match(phone):
        raise FamulorValidationError(
            name, f"expected an E.164 phone number such as +14155551234, got {value!r}"
        )
    return phone


def check_text(value: Any, name: str, max_chars: int, *, required: bool) -> str:
    """A string of at most ``max_chars`` characters; ``None`` or empty is ``""`` unless ``required``.

    :param value: the value to check.
    :param name: the argument's name, for the error.
    :param max_chars: the most characters allowed.
    :param required: whether an empty value is an error.
    """
    if value is None or value == "":
        if required:
            raise FamulorValidationError(name, "must not be empty")
        return ""
    if not isinstance(value, str):
        raise FamulorValidationError(name, f"expected a string, got {type(value).__name__}")
    if len(value) > max_chars:
        raise FamulorValidationError(name, f"has {len(value)} characters; at most {max_chars} are allowed")
    return value


def check_variables(value: Any, name: str = "variables") -> dict[str, Any] | None:
    """Template variables: a mapping such as ``{"1": "A-1234"}``, or its JSON text (as rendered).

    :param value: the value to check.
    :param name: the argument's name, for the error.
    """
    if is_blank(value) or value == {}:
        return None
    if isinstance(value, str):  # a rendered template: JSON (``| tojson``) or a dict's Python text
        try:
            value = json.loads(value)
        except ValueError:
            try:
                value = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                raise FamulorValidationError(
                    name, f'expected a mapping or its text such as {{"1": "A-1234"}}, got {value!r}'
                ) from None
    if not isinstance(value, Mapping):
        raise FamulorValidationError(
            name, f'expected a mapping such as {{"1": "A-1234"}}, got {type(value).__name__}'
        )
    for key, item in value.items():
        if not isinstance(item, str | int | float) or isinstance(item, bool):
            raise FamulorValidationError(name, f"the value of {key!r} must be text or a number")
    return {str(key): item for key, item in value.items()} or None


def as_list(value: Any, name: str) -> list[Any] | None:
    """A list from an argument that may be a list, one value, or a rendered template string.

    :param value: the value to read.
    :param name: the argument's name, for the error.
    """
    if is_blank(value):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith(("[", "(")):
            return [part.strip() for part in text.split(",") if part.strip()]
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise FamulorValidationError(name, f"cannot read a list from {value!r}") from None
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return [value]
