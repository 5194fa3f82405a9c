"""FifoPermits: free permits without awaiting, FIFO hand-off, nothing lost on timeout or cancel."""

from __future__ import annotations

import asyncio

import pytest

from fastapi_dbpool.pool.waiting import FifoPermits


async def test_free_permits_are_taken_without_waiting() -> None:
    permits = FifoPermits(2)
    assert permits.try_acquire() and permits.try_acquire()
    assert not permits.try_acquire()
    permits.release()
    assert permits.try_acquire()


async def test_a_returned_permit_goes_to_the_oldest_waiter_not_a_newcomer() -> None:
    permits = FifoPermits(1)
    assert permits.try_acquire()
    order: list[str] = []

    async def wait(name: str) -> None:
        await permits.acquire(5)
        order.append(name)

    first = asyncio.create_task(wait("first"))
    await asyncio.sleep(0)
    second = asyncio.create_task(wait("second"))
    await asyncio.sleep(0)
    permits.release()
    assert not permits.try_acquire()  # handed to "first", though it has not run yet
    await first
    permits.release()
    await second
    assert order == ["first", "second"]


async def test_timeout_leaves_no_waiter_behind() -> None:
    permits = FifoPermits(1)
    assert permits.try_acquire()
    with pytest.raises(TimeoutError):
        await permits.acquire(0.01)
    permits.release()
    assert permits.try_acquire()  # the timed-out waiter neither holds nor blocks it


async def test_cancelled_after_the_hand_off_passes_the_permit_on() -> None:
    permits = FifoPermits(1)
    assert permits.try_acquire()
    waiter = asyncio.create_task(permits.acquire(5))
    await asyncio.sleep(0)
    permits.release()  # handed to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert permits.try_acquire()
    assert not permits.try_acquire()
