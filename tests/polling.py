"""Wait, with a deadline, for a condition that another task or process will make true."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(condition: Callable[[], object], timeout: float = 10, what: str = "") -> None:
    """Poll *condition* every 10 ms until it is truthy; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: {what or condition}")
        await asyncio.sleep(0.01)
