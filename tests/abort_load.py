"""A load generator that aborts some of its requests, over raw sockets.

Each worker keeps an HTTP/1.1 keep-alive connection to the server and sends requests
drawn from a mix of reads and writes of the users_api. A fraction of them are aborted
at a random moment, the way real clients vanish:

* ``partial``: the connection is closed in the middle of the request (headers or
  body cut short), so the server sees a disconnect while reading it;
* ``sent``: the request is sent whole and the connection closed at once;
* ``in_flight``: the request is sent and the connection closed a few milliseconds
  later, while the handler is likely running its queries or writing the answer.

Half of the aborts close the socket gracefully (FIN), half reset it (RST). An aborted
worker opens a new connection. Every request that is not aborted must be answered.

Run on its own against a running server (``python -m tests.abort_load --help``);
the reliability test drives it against a uvicorn process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field

ABORT_MODES = ("partial", "sent", "in_flight")


@dataclass
class LoadReport:
    """What happened to the requests of one run."""

    sent: int = 0
    aborted: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # non-2xx or transport errors
    seconds: float = 0.0

    @property
    def aborted_total(self) -> int:
        """Requests the client aborted on purpose."""
        return sum(self.aborted.values())

    @property
    def answered(self) -> int:
        """Requests answered (any status)."""
        return sum(self.statuses.values())


@dataclass(frozen=True)
class Request:
    """One HTTP request of the mix."""

    method: str
    path: str
    body: dict[str, object] | None = None

    def encode(self) -> bytes:
        payload = json.dumps(self.body).encode() if self.body is not None else b""
        head = f"{self.method} {self.path} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        if self.body is not None:
            head += f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n"
        return head.encode() + b"\r\n" + payload


class Mix:
    """Reads and writes of the users_api on a known set of users; all answer 2xx."""

    def __init__(self, user_ids: list[int], rng: random.Random) -> None:
        self.user_ids = user_ids
        self.rng = rng
        self.serial = 0

    def next(self) -> Request:
        rng = self.rng
        user = rng.choice(self.user_ids)
        self.serial += 1
        roll = rng.random()
        if roll < 0.40:
            return Request("GET", f"/users/{user}")
        if roll < 0.55:
            return Request("GET", "/users?limit=20")
        if roll < 0.65:
            return Request("GET", f"/items?owner_id={user}&limit=10")
        if roll < 0.80:
            email = f"load-{self.serial}-{rng.randrange(10**9)}@example.com"
            return Request("POST", "/users", {"name": "Load", "email": email})
        if roll < 0.90:
            return Request("PATCH", f"/users/{user}", {"name": f"Renamed {self.serial}"})
        return Request("POST", "/items", {"title": f"Item {self.serial}", "owner_id": user})


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def _abort(writer: asyncio.StreamWriter, data: bytes, mode: str, rng: random.Random) -> None:
    if mode == "partial":
        writer.write(data[: rng.randrange(1, len(data))])
        await writer.drain()
    else:
        writer.write(data)
        await writer.drain()
        if mode == "in_flight":
            await asyncio.sleep(rng.uniform(0.0005, 0.02))
    if rng.random() < 0.5:
        writer.transport.abort()  # RST
    else:
        writer.close()  # FIN


async def _worker(
    host: str,
    port: int,
    mix: Mix,
    counter: list[int],
    total: int,
    abort_rate: float,
    report: LoadReport,
    rng: random.Random,
    timeout: float,
) -> None:
    reader = writer = None
    while counter[0] < total:
        counter[0] += 1
        request = mix.next()
        data = request.encode()
        report.sent += 1
        if writer is None:
            reader, writer = await asyncio.open_connection(host, port)
        assert reader is not None
        if rng.random() < abort_rate:
            mode = rng.choice(ABORT_MODES)
            await _abort(writer, data, mode, rng)
            report.aborted[mode] += 1
            reader = writer = None
            continue
        try:
            writer.write(data)
            await writer.drain()
            status = await asyncio.wait_for(_read_response(reader), timeout)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
            report.failures.append(f"{request.method} {request.path}: {type(error).__name__}")
            writer.transport.abort()
            reader = writer = None
            continue
        report.statuses[status] += 1
        if not 200 <= status < 300:
            report.failures.append(f"{request.method} {request.path}: {status}")
    if writer is not None:
        writer.close()


async def run_load(
    host: str,
    port: int,
    user_ids: list[int],
    *,
    total: int = 10_000,
    concurrency: int = 32,
    abort_rate: float = 0.05,
    seed: int = 3,
    timeout: float = 10.0,
) -> LoadReport:
    """Send *total* requests from *concurrency* connections; abort about *abort_rate*."""
    rng = random.Random(seed)
    mix = Mix(user_ids, random.Random(rng.random()))
    report = LoadReport()
    counter = [0]
    started = time.perf_counter()
    await asyncio.gather(
        *(
            _worker(
                host, port, mix, counter, total, abort_rate, report,
                random.Random(rng.random()), timeout,
            )
            for _ in range(concurrency)
        )
    )  # fmt: skip
    report.seconds = time.perf_counter() - started
    return report


def main() -> None:
    """Run the load against a server that already has users 1..N."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--users", type=int, default=50, help="existing user ids 1..N")
    parser.add_argument("--total", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--abort-rate", type=float, default=0.05)
    args = parser.parse_args()
    report = asyncio.run(
        run_load(
            "127.0.0.1",
            args.port,
            list(range(1, args.users + 1)),
            total=args.total,
            concurrency=args.concurrency,
            abort_rate=args.abort_rate,
        )
    )
    print(
        f"{report.sent} requests in {report.seconds:.1f} s, {report.aborted_total} aborted "
        f"{dict(report.aborted)}, statuses {dict(report.statuses)}, "
        f"{len(report.failures)} failures"
    )


if __name__ == "__main__":
    main()
