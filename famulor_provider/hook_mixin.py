"""The lazy ``hook`` shared by the Famulor operators, the sensor and the notifier."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from famulor_provider.hooks.famulor import FamulorHook


class FamulorHookMixin:
    """A ``FamulorHook`` on ``famulor_conn_id``, built on first use (on the worker, never at parse)."""

    famulor_conn_id: str

    @cached_property
    def hook(self) -> FamulorHook:
        from famulor_provider.hooks.famulor import FamulorHook

        return FamulorHook(self.famulor_conn_id)
