"""What the trigger benchmarks share: a trigger's first event, the event loop's worst lag, quiet logs.

Imported by the benchmark scripts (run as ``python benchmarks/NAME.py``, so this folder is on
``sys.path``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any


async def first_event(trigger: Any) -> dict[str, Any]:
    """The payload of the first event ``trigger.run()`` yields."""
    async for event in trigger.run():
        return event.payload  # type: ignore[no-any-return]
    raise RuntimeError("the trigger ended without an event")


async def watch_lag(stop: asyncio.Event, worst: list[float], tick: float = 0.01) -> None:
    """Keep in ``worst[0]`` the longest the loop was late waking a ``tick``-second sleep, until ``stop``."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        started = loop.time()
        await asyncio.sleep(tick)
        worst[0] = max(worst[0], loop.time() - started - tick)


def quiet_logs(lowest_shown: int) -> None:
    """Log only from ``lowest_shown`` up: one line per trigger per poll would dominate the timing."""
    logging.disable(lowest_shown - 10)
    try:
        import structlog  # Airflow 3 logs triggers through structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(lowest_shown))
    except ImportError:
        pass
