"""Steady postback load over HTTP, and what every request got back.

Each postback carries a tag `fseq` whose value no other postback of the run has, so its
row in the Postgres log can be found. Every request is recorded with the phase (the
fault being injected) it was answered in: its HTTP status, or the transport error it
met (connection refused or reset while the web process is dead, which is not a
response). The postbacks go through `rawhttp` (cheap), the routing calls through httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import Counter
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx

from .rawhttp import TIMEOUT, RawClient, TransportError

SEQ_TAG = "fseq"
MAX_IN_FLIGHT = 200  # past this the generator skips ticks instead of piling requests up
CONNECTIONS = 32  # keep-alive connections of the postback load


@dataclass
class Outcome:
    phase: str  # the fault phase when it was answered (or failed), where it belongs
    sent: float  # time.monotonic() when sent
    status: int | None = None  # HTTP status, None when no response came back
    error: str | None = None  # the transport error's class name, when no response
    answered: float | None = None  # time.monotonic() of the response or error
    body: str | None = None  # the body of an unexpected response, for the report
    served: float | None = None  # s the server took: from request written to response read


@dataclass
class Tally:
    """Every request's outcome: postbacks by their fseq value, the rest as a list."""

    postbacks: dict[str, Outcome] = field(default_factory=dict)
    routing: list[tuple[str, Outcome]] = field(default_factory=list)  # (operation, outcome)
    skipped: Counter[str] = field(default_factory=Counter)  # ticks dropped, by phase

    def accepted(self) -> set[str]:
        return {seq for seq, o in self.postbacks.items() if o.status == 200}

    def accepted_since(self, moment: float) -> bool:
        """Whether a postback sent at or after `moment` (time.monotonic()) got a 200."""
        return any(o.sent >= moment and o.status == 200 for o in self.postbacks.values())

    def every_outcome(self) -> list[tuple[str, Outcome]]:
        return [("postback", o) for o in self.postbacks.values()] + self.routing

    def server_errors(self) -> list[tuple[str, Outcome]]:
        """Responses that are a 5xx other than 503 `unavailable`: never right."""
        return [
            (op, o)
            for op, o in self.every_outcome()
            if o.status is not None and o.status >= 500 and o.status != 503
        ]

    def by_phase(self, phase: str) -> Counter[str]:
        counts: Counter[str] = Counter()
        for o in self.postbacks.values():
            if o.phase != phase:
                continue
            counts["sent"] += 1
            if o.status is not None:
                counts[str(o.status)] += 1
            elif (o.error or "").endswith("Timeout"):
                counts["timeout"] += 1
            else:
                counts["conn_error"] += 1
        return counts

    def failures(self, phase: str) -> Counter[str]:
        """Postbacks of the phase that got no 200, by error or response body."""
        return Counter(
            f"{o.status or o.error}: {o.body}"
            for o in self.postbacks.values()
            if o.phase == phase and o.status != 200
        )

    def latency_ms(self, phase: str, quantile: float) -> float:
        """Quantile of the time the server took to answer postbacks in the phase (from
        the request written to the response read: waits for a free connection of the
        load generator not included)."""
        took = sorted(
            o.served * 1000
            for o in self.postbacks.values()
            if o.phase == phase and o.served is not None
        )
        return took[min(len(took) - 1, int(len(took) * quantile))] if took else 0.0

    def unavailable_seconds(self, phase: str) -> float:
        """From the first to the last postback of the phase that was not a 200."""
        times = [
            t
            for o in self.postbacks.values()
            if o.phase == phase and o.status != 200
            for t in (o.sent, o.answered or o.sent)
        ]
        return max(times) - min(times) if times else 0.0


class Load:
    """Postbacks at `rate` a second over `callers` caller numbers, plus connect/end
    cycles on some of them, until `stop()`; sent to the web processes of `base_url`
    (one, or several in turn, as a balancer does)."""

    def __init__(
        self,
        base_url: str | list[str],
        key: str,
        routing_token: str,
        run: str,
        callers: list[str],
        rate: float,
        connect_every: float = 0.25,
    ) -> None:
        self.base_urls = [base_url] if isinstance(base_url, str) else base_url
        self.key = key
        self.routing = {"Authorization": f"Bearer {routing_token}"}
        self.run = run
        self.callers = callers
        self.rate = rate
        self.connect_every = connect_every
        self._phase = "warm-up"
        self.phase_started: dict[str, float] = {self._phase: time.monotonic()}
        self.tally = Tally()
        self.user_agent = f"calltags-faults/{run}"
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self.stopped: float | None = None
        self._seq = itertools.count()
        self._calls = itertools.count()
        self._random = random.Random(run)
        self.connected: set[str] = set()  # call_uuids of connects answered 201
        self.ended: set[str] = set()  # call_uuids of ends answered 200

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, name: str) -> None:
        self._phase = name
        self.phase_started[name] = time.monotonic()

    def phase_seconds(self) -> dict[str, float]:
        """How long each phase lasted, until the load stopped."""
        starts = sorted(self.phase_started.items(), key=lambda item: item[1])
        ends = [t for _, t in starts[1:]] + [self.stopped or time.monotonic()]
        return {name: end - start for (name, start), end in zip(starts, ends, strict=True)}

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop sending, and wait for every request in flight to be answered or fail."""
        self._stop.set()
        self.stopped = time.monotonic()
        if self._runner is not None:
            await self._runner

    async def _run(self) -> None:
        urls = [httpx.URL(base) for base in self.base_urls]
        raws = [RawClient(url.host, url.port or 80, self.user_agent, CONNECTIONS) for url in urls]
        async with contextlib.AsyncExitStack() as opened:
            clients = [
                await opened.enter_async_context(
                    httpx.AsyncClient(
                        base_url=base, timeout=TIMEOUT, headers={"User-Agent": self.user_agent}
                    )
                )
                for base in self.base_urls
            ]
            try:
                connects = asyncio.create_task(self._connect_loop(clients))
                await self._postback_loop(raws)
                await connects
                while self._tasks:
                    await asyncio.gather(*list(self._tasks))
            finally:
                for raw in raws:
                    raw.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _postback_loop(self, raws: list[RawClient]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        scheduled = 0
        while not self._stop.is_set():
            due = int((loop.time() - started) * self.rate)
            if due - scheduled > self.rate:  # over a second behind: drop, do not burst
                self.tally.skipped[self.phase] += due - scheduled
                scheduled = due
            while scheduled < due and len(self._tasks) < MAX_IN_FLIGHT:
                self._spawn(self._postback(raws[scheduled % len(raws)]))
                scheduled += 1
            await asyncio.sleep(0.005)

    async def _postback(self, raw: RawClient) -> None:
        n = next(self._seq)
        seq = f"{self.run}-{n}"
        caller = self.callers[n % len(self.callers)]
        outcome = Outcome(self.phase, time.monotonic())
        self.tally.postbacks[seq] = outcome
        # One in five as a JSON POST with the key in the path, the rest as the GET
        # publishers mostly send.
        params = {"caller_number": caller, SEQ_TAG: seq, "src": "faults"}
        try:
            if n % 5 == 4:
                response = await raw.post_json(f"/data_writing/{self.key}", params)
            else:
                response = await raw.get("/data_writing", {"key": self.key, **params})
        except TransportError as exc:
            outcome.error = exc.kind
            outcome.body = str(exc)[:200]
        else:
            outcome.status = response.status
            outcome.served = response.seconds
            if response.status != 200:
                outcome.body = response.body[:500].decode("utf-8", "replace")
        outcome.answered = time.monotonic()
        outcome.phase = self.phase

    async def _connect_loop(self, clients: list[httpx.AsyncClient]) -> None:
        """Connect a caller, end the call a little later (on the next web process):
        calls made and ended under the faults, whose snapshots go through the log too."""
        for n in itertools.count():
            if self._stop.is_set():
                return
            connect, end = clients[n % len(clients)], clients[(n + 1) % len(clients)]
            self._spawn(self._call_cycle(connect, end))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.connect_every)

    async def _call_cycle(self, client: httpx.AsyncClient, ender: httpx.AsyncClient) -> None:
        call_uuid = f"load-{self.run}-{next(self._calls)}"
        caller = self._random.choice(self.callers)
        outcome = Outcome(self.phase, time.monotonic())
        self.tally.routing.append(("connect", outcome))
        await self._send(
            client.post(
                "/calls",
                json={"caller_number": caller, "call_uuid": call_uuid, "campaign": "faults"},
                headers=self.routing,
            ),
            outcome,
        )
        if outcome.status != 201:
            return
        self.connected.add(call_uuid)
        await asyncio.sleep(0.5)
        end = Outcome(self.phase, time.monotonic())
        self.tally.routing.append(("end", end))
        await self._send(ender.post(f"/calls/{call_uuid}/end", headers=self.routing), end)
        if end.status == 200:
            self.ended.add(call_uuid)

    async def _send(self, request: Awaitable[httpx.Response], outcome: Outcome) -> None:
        try:
            response = await request
        except httpx.TransportError as exc:
            outcome.error = type(exc).__name__
            outcome.body = str(exc)[:200]
        else:
            outcome.status = response.status_code
            if response.status_code not in (200, 201):
                outcome.body = response.text[:500]
        outcome.answered = time.monotonic()
        outcome.phase = self.phase
