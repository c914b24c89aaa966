"""Building the sandbox's HTTP answers and validating request fields as the API (Laravel) does."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

E164 = re.compile(r"\+[1-9]\d{6,14}")
INVALID_PHONE = "Invalid phone number format, expected E.164 (e.g. +14155551234)"


@dataclass
class Reply:
    """One answer: status, body, content type and extra headers."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


Query = dict[str, str]
Body = dict[str, Any]
Route = Callable[[re.Match[str], Query, Body], "Reply | None"]


def json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(payload).encode(), headers=headers or {})


def error_reply(status: int, error_code: str, error: str) -> Reply:
    return json_reply(status, {"success": False, "error": error, "error_code": error_code})


def validation_error(errors: dict[str, list[str]]) -> Reply:
    """Laravel's 422 shape: the first message, "(and N more errors)", and every message by field."""
    messages = [m for field_messages in errors.values() for m in field_messages]
    summary = messages[0]
    if len(messages) > 1:
        more = len(messages) - 1
        summary += f" (and {more} more error{'s' if more > 1 else ''})"
    return json_reply(422, {"message": summary, "errors": errors})


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def int_field(data: Mapping[str, Any], name: str, errors: dict[str, list[str]]) -> int | None:
    """A required integer (Laravel's ``integer`` rule also accepts digit strings)."""
    label = name.replace("_", " ")
    value = data.get(name)
    if value is None or value == "":
        errors[name] = [f"The {label} field is required."]
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(value, str) and value.isdigit():
        return int(value)
    else:
        errors[name] = [f"The {label} field must be an integer."]
    return None


def str_field(
    data: Mapping[str, Any], name: str, errors: dict[str, list[str]], *, max_len: int, required: bool = True
) -> str | None:
    label = name.replace("_", " ")
    value = data.get(name)
    if value is None or value == "":
        if required:
            errors[name] = [f"The {label} field is required."]
    elif not isinstance(value, str):
        errors[name] = [f"The {label} field must be a string."]
    elif len(value) > max_len:
        errors[name] = [f"The {label} field must not be greater than {max_len} characters."]
    else:
        return value
    return None


def check_phone(phone: str) -> Reply | None:
    """422 INVALID_PHONE unless ``phone`` is E.164; a leading space is a ``+`` the client forgot to encode."""
    if E164.fullmatch(phone):
        return None
    if phone.startswith(" "):
        return error_reply(
            422, "INVALID_PHONE", "Invalid phone number: a '+' in a query string must be URL-encoded as %2B"
        )
    return error_reply(422, "INVALID_PHONE", INVALID_PHONE)


def api_path(path: str) -> str:
    """The path as the API documents it: ``/api/user/me/`` -> ``/user/me`` (other paths unchanged)."""
    if path == "/api" or path.startswith("/api/"):
        path = path[len("/api") :]
    return path.rstrip("/") or "/"


def session_expired() -> Reply:
    return error_reply(
        403, "SESSION_EXPIRED", "The 24-hour session has expired. Send a template message to reopen it."
    )
