"""A local imitation of Famulor's Classic API (``FamulorSandbox``) for DAGs and tests.

Names load lazily: the pytest plugin imports this package in every pytest run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from famulor_provider.testing.sandbox import (
        CONVERSATION_ORDERS,
        DEFAULT_SEND_RATE_LIMIT,
        FAULTS,
        SANDBOX_API_KEY,
        SEED_SENDERS,
        SEED_TEMPLATES,
        FamulorSandbox,
        Fault,
        RecordedRequest,
        default_templates,
    )

__all__ = [
    "CONVERSATION_ORDERS",
    "DEFAULT_SEND_RATE_LIMIT",
    "FAULTS",
    "SANDBOX_API_KEY",
    "SEED_SENDERS",
    "SEED_TEMPLATES",
    "FamulorSandbox",
    "Fault",
    "RecordedRequest",
    "default_templates",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("famulor_provider.testing.sandbox"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
