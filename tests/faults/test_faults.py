"""The service through faults, under steady postback load: a worker killed mid-batch,
Postgres unreachable for 10 s, the web process killed and restarted, Redis killed and
restarted from its append-only file. Afterwards every postback answered 200 is in the
Postgres log exactly once, no request got a 5xx but 503, and calls kept their tags.

Black-box: HTTP to the web process, SQL on the log; Redis is read only to know when a
worker holds a batch and when the workers are done.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import orjson
from logtools import until

from .harness import backlog, pending_by_consumer, streams
from .load import SEQ_TAG, Load, Outcome
from .report import REPORTS, Fault, Verdict, table
from .stack import ADMIN_TOKEN, ROUTING_TOKEN, Service, Stack

RATE = 300.0  # postbacks a second
CALLERS = [f"+16465{n:06d}" for n in range(400)]  # the load's callers
WARM_UP = 3.0  # s of load before the first fault
SETTLE = 3.0  # s of load after a fault healed, before the next one
POSTGRES_OUTAGE = 10.0  # s
WEB_DOWN = 1.0  # s between the web process's kill and its restart
REDIS_DOWN = 2.0  # s between Redis's kill and its restart
FREEZE = 1.0  # s the workers are frozen before Redis is killed, so that entries wait
CATCH_UP = 15.0  # s the workers are given to catch up after Postgres is back
RECOVERY_TIMEOUT = 30.0  # s a healed fault may take until postbacks are accepted again

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ROUTING = {"Authorization": f"Bearer {ROUTING_TOKEN}"}

WARM = "warm-up"
WORKER = "1 worker kill -9 mid-batch"
POSTGRES = "2 Postgres unreachable 10 s"
WEB = "3 web kill -9, restart"
REDIS = "4 Redis kill -9, restart"
COOL = "cool-down"


async def test_nothing_accepted_is_lost_or_duplicated_through_faults(stack: Stack) -> None:
    phases = [Fault(WARM)]
    load, verdict, drained, leftover = await run_load(
        stack, phases, lambda load: _inject_faults(stack, load, phases)
    )
    assert drained is not None, f"{leftover}\n{stack.tails()}"
    assert_answers(load, verdict)
    routing = [
        (op, o)
        for op, o in load.tally.routing
        if o.status is not None and o.status not in ((201 if op == "connect" else 200), 503)
    ]
    assert not routing, f"unexpected routing answers: {_describe(routing)}"
    assert_nothing_lost(verdict)
    assert load.tally.by_phase(POSTGRES)["200"] > 0, "no postback accepted while Postgres was down"
    assert not stack.unexpected_exits, (
        "processes exited that the suite did not kill (it restarted them, as a process manager"
        " would, so the figures above hold with that restart):\n"
        + "\n\n".join(stack.unexpected_exits)
    )


async def run_load(
    stack: Service,
    phases: list[Fault],
    inject: Callable[[Load], Awaitable[None]],
    headline: Callable[[Load, Verdict], str] | None = None,
) -> tuple[Load, Verdict, float | None, str]:
    """Calls set up before the faults, then load on the web processes while `inject`
    runs the faults (appending to `phases`), the drain and the checks; the report
    printed (and kept for the terminal summary) whatever happened, under `headline`.
    (load, verdict, seconds the drain took or None, what it left)."""
    started = time.monotonic()
    load: Load | None = None
    verdict = Verdict()
    drained: float | None = None
    leftover = broke = ""
    try:
        async with httpx.AsyncClient(base_url=stack.web_url, timeout=10) as http:
            key = await _create_key(http)
            kept = await _calls_before_faults(http, key, stack.run)
            load = Load(stack.web_urls, key, ROUTING_TOKEN, stack.run, CALLERS, RATE)
            load.start()
            try:
                await inject(load)
            finally:
                await load.stop()
            drained, leftover = await _drain(stack)
            verdict = await _verdict(stack, load, kept, http)
    except BaseException as exc:
        broke = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if load is not None:
            report = table(
                run=stack.run,
                rate=RATE,
                phases=phases,
                faults=len([p for p in phases if p.phase not in (WARM, COOL)]),
                tally=load.tally,
                durations=load.phase_seconds(),
                verdict=verdict,
                seconds=time.monotonic() - started,
                drained_seconds=drained,
                unexpected_exits=len(stack.unexpected_exits),
                broke=broke,
            )
            if headline is not None:
                report = headline(load, verdict) + "\n" + report
            print("\n" + report, flush=True)
            REPORTS.append(report)
    return load, verdict, drained, leftover


def assert_answers(load: Load, verdict: Verdict) -> None:
    """No 5xx but 503, postbacks answered 200 or 503, some accepted, calls set up before
    the faults unchanged."""
    assert not load.tally.server_errors(), _describe(load.tally.server_errors())
    others = [
        ("postback", o)
        for o in load.tally.postbacks.values()
        if o.status is not None and o.status not in (200, 503)
    ]
    assert not others, f"postbacks answered neither 200 nor 503: {_describe(others)}"
    assert verdict.accepted > 0
    assert not verdict.kept_problems, "\n".join(verdict.kept_problems)


def assert_nothing_lost(verdict: Verdict) -> None:
    """Every 200 in Postgres once and as a 200, every 201 connect and 200 end there."""
    assert not verdict.lost, f"{len(verdict.lost)} accepted postbacks lost: {verdict.lost[:20]}"
    assert not verdict.duplicated, f"rows logged more than once: {verdict.duplicated}"
    assert not verdict.logged_otherwise, f"200s logged otherwise: {verdict.logged_otherwise}"
    assert verdict.unknown_rows == 0
    assert not verdict.calls_lost, f"connected calls missing in Postgres: {verdict.calls_lost}"
    assert not verdict.calls_not_ended, f"ended calls not completed: {verdict.calls_not_ended}"


# -- the faults -----------------------------------------------------------------------


async def _inject_faults(stack: Stack, load: Load, phases: list[Fault]) -> None:
    """The faults one after another under the load, each followed by SETTLE s of it."""
    await stack.start_worker()
    await stack.start_worker()
    stack.supervise()
    await _steady(load, WARM_UP)
    for phase, inject in (
        (WORKER, _kill_worker_mid_batch),
        (POSTGRES, _cut_postgres),
        (WEB, _kill_web),
        (REDIS, _kill_redis),
    ):
        phases.append(Fault(phase))
        load.phase = phase
        phases[-1].detail = await inject(stack, load)
        await _steady(load, SETTLE)
    phases.append(Fault(COOL))
    load.phase = COOL
    await _steady(load, 1.0)


async def _kill_worker_mid_batch(stack: Stack, load: Load) -> str:
    """Freeze a worker until it is caught holding entries it read and has not
    acknowledged (a batch in hand), kill it there, start another; its entries must be
    taken over."""
    victim = stack.workers[0]
    mine = stack.consumers[victim.name]
    deadline = time.monotonic() + 20
    async with stack.redis_client() as client:
        names = await streams(client, stack.prefix)
        for attempt in itertools.count(1):
            victim.signal(signal.SIGSTOP)
            pending = await pending_by_consumer(client, names)
            in_hand = sum(pending.get(name, 0) for name in mine)
            if in_hand:
                break
            victim.signal(signal.SIGCONT)
            assert time.monotonic() < deadline, f"{victim.name} never held a batch"
            await asyncio.sleep(0.01 * (attempt % 5))
        stack.retire(victim)
        victim.kill9()
        killed = time.monotonic()
        heir = await stack.start_worker()

        async def taken_over() -> bool:
            pending = await pending_by_consumer(client, names)
            return sum(pending.get(name, 0) for name in mine) == 0

        await until(taken_over, "the killed worker's entries taken over", 30, 0.1)
    return (
        f"{victim.name} killed holding {in_hand} entries (try {attempt}); {heir.name}"
        f" started; entries taken over {time.monotonic() - killed:.1f} s after the kill"
    )


async def _cut_postgres(stack: Stack, load: Load) -> str:
    """Postgres unreachable for POSTGRES_OUTAGE s: the log waits in Redis, and the
    workers catch up once it is back (how fast depends on the machine: not asserted
    here, the drain at the end is)."""
    await stack.gate.cut()
    cut = time.monotonic()
    peak = 0
    async with stack.redis_client() as client:
        names = await streams(client, stack.prefix)
        while time.monotonic() - cut < POSTGRES_OUTAGE:
            peak = max(peak, await backlog(client, names))
            await asyncio.sleep(0.25)
        await stack.gate.open()
        reopened = time.monotonic()

        async def caught_up() -> bool:
            return await backlog(client, names) < RATE  # under a second of load waits

        try:
            took = f"caught up {await until(caught_up, 'catching up', CATCH_UP, 0.1):.1f} s after"
        except AssertionError:
            took = f"{await backlog(client, names)} entries still waiting {CATCH_UP:.0f} s after"
    return f"Postgres cut {reopened - cut:.1f} s, backlog peaked at {peak} entries, {took}"


async def _kill_web(stack: Stack, load: Load) -> str:
    stack.web.kill9()
    killed = time.monotonic()
    await asyncio.sleep(WEB_DOWN)
    await stack.start_web()
    back = await _recovered(load, killed)
    return f"first 200 {back:.1f} s after the kill (restarted after {WEB_DOWN:.0f} s)"


async def _kill_redis(stack: Stack, load: Load) -> str:
    """Kill -9 Redis while it holds accepted entries that are not in Postgres yet (the
    workers are frozen for a moment before, so there are some), restart it on the same
    port and folder: the entries must come back from the append-only file."""

    async def kill() -> None:
        stack.redis.kill9()

    waiting, killed = await kill_while_entries_wait(stack, kill)
    await asyncio.sleep(REDIS_DOWN)
    stack.redis.start()
    restarted = time.monotonic()
    loaded = await stack.redis.wait_ready()
    back = await _recovered(load, killed)
    return (
        f"killed holding {waiting} entries not yet in Postgres; down {restarted - killed:.1f} s,"
        f" AOF loaded in {loaded:.1f} s; first 200 {back:.1f} s after the kill"
    )


async def kill_while_entries_wait(
    stack: Service, kill: Callable[[], Awaitable[None]]
) -> tuple[int, float]:
    """`kill` Redis while it holds accepted entries not yet in Postgres: the workers are
    frozen FREEZE s before. (entries waiting, time.monotonic() of the kill)."""
    frozen = list(stack.workers)
    for worker in frozen:
        worker.signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(FREEZE)
        async with stack.redis_client() as client:
            waiting = await backlog(client, await streams(client, stack.prefix))
        await kill()
        killed = time.monotonic()
    finally:
        for worker in frozen:
            worker.signal(signal.SIGCONT)
    assert waiting > 0, "no log entry waited in Redis when it was killed"
    return waiting, killed


async def _steady(load: Load, seconds: float) -> None:
    """Load for `seconds`, then check that postbacks are being accepted."""
    since = time.monotonic()
    await asyncio.sleep(seconds)
    await _recovered(load, since)


async def _recovered(load: Load, since: float) -> float:
    """Seconds from `since` until a postback sent after it got a 200."""

    async def accepted() -> bool:
        return load.tally.accepted_since(since)

    await until(accepted, "postbacks accepted again", RECOVERY_TIMEOUT)
    return time.monotonic() - since


async def _drain(stack: Service, timeout: float = 45.0) -> tuple[float | None, str]:
    """(seconds until the workers moved every entry to Postgres, None if they did not
    within `timeout`; what was left). The streams are then empty: an entry is deleted
    only after its commit."""
    async with stack.redis_client() as client:
        names = await streams(client, stack.prefix)

        async def empty() -> bool:
            return await backlog(client, names) == 0

        try:
            return await until(empty, "the workers drain the log", timeout, 0.1), ""
        except AssertionError:
            left = await backlog(client, names)
            pending = await pending_by_consumer(client, names)
        held = {name: n for name, n in pending.items() if n}
        alive = [p.name for p in stack.workers if p.alive]
        return None, (
            f"{left} entries left in Redis after {timeout} s; pending by consumer {held};"
            f" workers alive {alive}; consumers of workers {stack.consumers}"
        )


# -- before the faults: calls with tags ----------------------------------------------


@dataclass
class KeptCall:
    call_uuid: str
    state: str
    tags: dict[str, str]


async def _create_key(http: httpx.AsyncClient) -> str:
    response = await http.post("/admin/publishers", json={"name": "Faults"}, headers=ADMIN)
    assert response.status_code == 201, response.text
    response = await http.post(
        f"/admin/publishers/{response.json()['id']}/keys",
        json={"name": "faults", "type": "call_data_writing"},
        headers=ADMIN,
    )
    assert response.status_code == 201, response.text
    secret: str = response.json()["key"]
    return secret


async def _post(http: httpx.AsyncClient, key: str, caller: str, status: str, **tags: str) -> None:
    response = await http.get("/data_writing", params={"key": key, "caller_number": caller, **tags})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == status, response.text


async def _calls_before_faults(http: httpx.AsyncClient, key: str, run: str) -> list[KeptCall]:
    """A live call and an ended one, each with tags claimed at connect and tags
    written to it afterwards (callers the load never posts for)."""
    live = KeptCall(f"kept-live-{run}", "in_progress", {"keep": "live", "stage": "in-progress"})
    ended = KeptCall(f"kept-ended-{run}", "completed", {"keep": "ended", "stage": "after-end"})
    for n, call in enumerate((live, ended)):
        caller = f"+17185{n:06d}"
        await _post(http, key, caller, "call not found, tags stored", keep=call.tags["keep"])
        response = await http.post(
            "/calls", json={"caller_number": caller, "call_uuid": call.call_uuid}, headers=ROUTING
        )
        assert response.status_code == 201, response.text
        assert response.json()["tags"] == {"keep": call.tags["keep"]}
        if call is ended:
            response = await http.post(f"/calls/{call.call_uuid}/end", headers=ROUTING)
            assert response.status_code == 200, response.text
            status = "completed call found, tags applied"
        else:
            status = "call in progress, tags applied"
        await _post(http, key, caller, status, stage=call.tags["stage"])
    return [live, ended]


# -- the checks after the drain -------------------------------------------------------


async def _verdict(
    stack: Service, load: Load, kept: list[KeptCall], http: httpx.AsyncClient
) -> Verdict:
    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = await conn.fetch(
            f"SELECT tags->>'{SEQ_TAG}' AS seq, http_status FROM postbacks WHERE tags ? '{SEQ_TAG}'"
        )
        calls = {
            r["call_uuid"]: r for r in await conn.fetch("SELECT call_uuid, state, tags FROM calls")
        }
    finally:
        await conn.close()
    logged: dict[str, list[int]] = {}
    for row in rows:
        logged.setdefault(row["seq"], []).append(row["http_status"])
    accepted = load.tally.accepted()
    verdict = Verdict(
        accepted=len(accepted),
        exactly_once=sum(1 for seq in accepted if len(logged.get(seq, ())) == 1),
        lost=sorted(seq for seq in accepted if seq not in logged),
        duplicated={seq: len(found) for seq, found in logged.items() if len(found) > 1},
        logged_otherwise=sorted(
            seq for seq in accepted if any(s != 200 for s in logged.get(seq, ()))
        ),
        logged_unanswered=Counter(
            f"client got {_got(load.tally.postbacks[seq])}, logged {'/'.join(map(str, found))}"
            for seq, found in logged.items()
            if seq not in accepted and seq in load.tally.postbacks
        ),
        unknown_rows=sum(1 for seq in logged if seq not in load.tally.postbacks),
        connects=len(load.connected),
        ends=len(load.ended),
        calls_lost=sorted(load.connected - calls.keys()),
        calls_not_ended=sorted(
            u for u in load.ended if u in calls and calls[u]["state"] != "completed"
        ),
        kept_calls=len(kept),
    )
    for call in kept:
        problems = await _kept_call_problems(http, call, calls.get(call.call_uuid))
        verdict.kept_problems += problems
        verdict.kept_calls_ok += not problems
    return verdict


async def _kept_call_problems(
    http: httpx.AsyncClient, call: KeptCall, row: asyncpg.Record | None
) -> list[str]:
    problems: list[str] = []
    response = await http.get(f"/calls/{call.call_uuid}", headers=ROUTING)
    if response.status_code != 200:
        return [f"GET /calls/{call.call_uuid}: {response.status_code} {response.text}"]
    body: dict[str, Any] = response.json()
    if body["tags"] != call.tags or body["state"] != call.state:
        problems.append(f"{call.call_uuid} over HTTP: {body['state']} {body['tags']}, want {call}")
    if row is None:
        problems.append(f"{call.call_uuid} has no row in Postgres")
    elif orjson.loads(row["tags"]) != call.tags or row["state"] != call.state:
        problems.append(f"{call.call_uuid} in Postgres: {row['state']} {row['tags']}, want {call}")
    return problems


def _got(outcome: Outcome) -> str:
    return str(outcome.status) if outcome.status is not None else "no response"


def _describe(found: list[tuple[str, Any]], most: int = 10) -> str:
    return "; ".join(f"{op} in {o.phase!r}: {o.status} {o.body}" for op, o in found[:most]) + (
        f" (and {len(found) - most} more)" if len(found) > most else ""
    )
