"""HTTP load from threads in the background while a test watches the server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx

__all__ = ["background_load"]


@contextmanager
def background_load(
    work: Callable[[httpx.Client], None], *, clients: int
) -> Iterator[Callable[[], int]]:
    """Run *work* in a loop from *clients* threads until the block ends.

    Yields a function that returns how many calls of *work* completed so far. Each
    thread has its own ``httpx.Client``; errors in *work* stop the test at exit.
    """
    stop = threading.Event()
    done = [0] * clients
    errors: list[BaseException] = []

    def run(index: int) -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                try:
                    work(client)
                except BaseException as error:  # reported by the main thread
                    errors.append(error)
                    return
                done[index] += 1

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield lambda: sum(done)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    if errors:
        raise errors[0]
