"""A fake of Airflow's asset state store accessor, with the behaviour the inbound trigger relies on."""

from __future__ import annotations

import json
from typing import Any

MAX_VALUE_STORAGE_BYTES = 65_535  # Airflow's default [state_store] max_value_storage_bytes


class FakeAssetStateStore:
    """
    One asset's state store: JSON values (round-tripped like the real store), whole-value writes.

    Records each write's serialized size; ``oversized`` lists keys whose value exceeded Airflow's
    default limit (Airflow logs a warning there; the tests fail on it).
    """

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.writes: list[tuple[str, int]] = []
        self.oversized: list[str] = []

    async def aget(self, key: str, default: Any = None) -> Any:
        raw = self.values.get(key)
        return default if raw is None else json.loads(raw)

    async def aset(self, key: str, value: Any) -> None:
        if value is None:
            raise ValueError("Cannot set value as None")
        raw = json.dumps(value)
        if len(raw) > MAX_VALUE_STORAGE_BYTES:
            self.oversized.append(key)
        self.values[key] = raw
        self.writes.append((key, len(raw)))

    def largest_value(self) -> int:
        return max((len(raw) for raw in self.values.values()), default=0)

    async def adelete(self, key: str) -> None:
        self.values.pop(key, None)
        self.writes.append((key, 0))
