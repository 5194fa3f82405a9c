"""What metrics add to a request, in microseconds of CPU: ``python bench/metrics_cost.py``.

Times, with ``timeit``, the three things metrics put on the request path:
the request middleware (around an app that answers at once), one request's
``record_request``, and the observers one checkout calls (checkout-wait and hold
histograms, and the dashboard's per-second sums). No database is involved: the
figures are the overhead alone, to compare with a request's own CPU time.
"""

from __future__ import annotations

import asyncio
import time
import timeit

from fastapi_dbpool import Database, DatabaseSettings
from fastapi_dbpool.observe.history import PoolHistory
from fastapi_dbpool.observe.http_metrics import RequestMetricsMiddleware
from fastapi_dbpool.observe.metrics import Metrics

N = 200_000


async def empty_app(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def send(message) -> None:
    pass


def per_request_us(app) -> float:
    scope = {"type": "http", "method": "GET", "root_path": "", "path": "/users/1"}

    async def run() -> None:
        for _ in range(N):
            await app(scope, None, send)

    started = time.perf_counter()
    asyncio.run(run())
    return (time.perf_counter() - started) / N * 1e6


def main() -> None:
    database = Database(DatabaseSettings(url="sqlite:///unused.db"))
    metrics = Metrics([database])
    PoolHistory(database.monitor)  # the dashboard's observers, as install_metrics adds them
    monitor = database.monitor

    def checkout() -> None:
        monitor._waited(0.0001)
        for observer in monitor._hold_observers:
            observer(0.002)

    record = timeit.timeit(
        lambda: metrics.record_request("GET", "/users/{user_id}", 200, 0.001), number=N
    )
    observers = timeit.timeit(checkout, number=N)
    bare = per_request_us(empty_app)
    wrapped = per_request_us(RequestMetricsMiddleware(empty_app, metrics.record_request))
    render = timeit.timeit(metrics.render, number=200) / 200

    print(f"request middleware, record included: {wrapped - bare:6.1f} us per request")
    print(f"  of which record_request:           {record / N * 1e6:6.1f} us")
    print(f"observers of one checkout:           {observers / N * 1e6:6.1f} us")
    print(f"rendering a scrape:                  {render * 1e3:6.1f} ms")


if __name__ == "__main__":
    main()
