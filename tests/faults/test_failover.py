"""The service through a Redis failover, under steady load: two web processes and two
workers on `redis+sentinel://`, postbacks and connect/end cycles, then the primary's
machine dies (kill -9, and what it had not yet sent its replica, 20 ms behind, lost with
it) while the workers are frozen, so that entries wait in Redis. The Sentinels promote
the replica, the old primary comes back as its replica, and load goes on.

With CALLTAGS_WRITE_ACK=replica every postback answered 200 is in Postgres exactly once,
every connect answered 201 and every end answered 200 too, calls keep their tags, and no
request got a 5xx but 503. With =primary the same run prints how many acknowledged
postbacks the failover lost (not asserted: the figure is why the replica mode exists).
Both print the window during which postbacks got no 200.
"""

from __future__ import annotations

import asyncio
import signal
import time

import httpx

from .conftest import REPLICATION_LAG, Failover
from .harness import backlog, streams
from .load import Load
from .report import REPORTS, Fault, Verdict, table
from .stack import ROUTING_TOKEN
from .test_faults import (
    CALLERS,
    RATE,
    _calls_before_faults,
    _create_key,
    _describe,
    _drain,
    _recovered,
    _steady,
    _verdict,
)

WARM_UP = 3.0  # s of load before the failover
FREEZE = 1.0  # s the workers are frozen before the kill, so that entries wait in Redis
SETTLE = 3.0  # s of load once postbacks are accepted again
FAILOVER_TIMEOUT = 30.0  # s the Sentinels may take to promote the replica

WARM = "warm-up"
FAILOVER = "primary kill -9, failover"
COOL = "cool-down"


async def test_a_failover_loses_nothing_acknowledged_by_replicas(failover: Failover) -> None:
    service = failover.service
    started = time.monotonic()
    phases = [Fault(WARM)]
    load: Load | None = None
    verdict = Verdict()
    drained: float | None = None
    window: dict[str, float] = {}
    leftover = broke = ""
    try:
        async with httpx.AsyncClient(base_url=service.web_url, timeout=10) as http:
            key = await _create_key(http)
            kept = await _calls_before_faults(http, key, service.run)
            load = Load(service.web_urls, key, ROUTING_TOKEN, service.run, CALLERS, RATE)
            load.start()
            try:
                await service.start_worker()
                await service.start_worker()
                service.supervise()
                await _steady(load, WARM_UP)
                phases.append(Fault(FAILOVER))
                load.phase = FAILOVER
                phases[-1].detail = await _fail_over(failover, load, window)
                await _steady(load, SETTLE)
                phases.append(Fault(COOL))
                load.phase = COOL
                await _steady(load, 1.0)
            finally:
                await load.stop()
            drained, leftover = await _drain(service)
            verdict = await _verdict(service, load, kept, http)
    except BaseException as exc:
        broke = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if load is not None:
            report = table(
                run=service.run,
                rate=RATE,
                phases=phases,
                faults=1,
                tally=load.tally,
                durations=load.phase_seconds(),
                verdict=verdict,
                seconds=time.monotonic() - started,
                drained_seconds=drained,
                unexpected_exits=len(service.unexpected_exits),
                broke=broke,
            )
            report = _headline(failover, load, verdict, window) + "\n" + report
            print("\n" + report, flush=True)
            REPORTS.append(report)

    assert drained is not None, f"{leftover}\n{service.tails()}"
    assert not load.tally.server_errors(), _describe(load.tally.server_errors())
    others = [
        ("postback", o)
        for o in load.tally.postbacks.values()
        if o.status is not None and o.status not in (200, 503)
    ]
    assert not others, f"postbacks answered neither 200 nor 503: {_describe(others)}"
    assert verdict.accepted > 0
    assert not verdict.kept_problems, "\n".join(verdict.kept_problems)
    assert not service.unexpected_exits, "\n\n".join(service.unexpected_exits)
    if failover.write_ack != "replica":
        return  # what the primary alone loses is printed above, not asserted
    assert not verdict.lost, f"{len(verdict.lost)} accepted postbacks lost: {verdict.lost[:20]}"
    assert not verdict.duplicated, f"rows logged more than once: {verdict.duplicated}"
    assert not verdict.logged_otherwise, f"200s logged otherwise: {verdict.logged_otherwise}"
    assert verdict.unknown_rows == 0
    assert not verdict.calls_lost, f"connected calls missing in Postgres: {verdict.calls_lost}"
    assert not verdict.calls_not_ended, f"ended calls not completed: {verdict.calls_not_ended}"


async def _fail_over(failover: Failover, load: Load, window: dict[str, float]) -> str:
    """Freeze the workers, kill the primary with what it had not sent its replica, let
    the Sentinels promote the replica, start the old primary again as a replica of the
    new one (as a process manager that asks the Sentinels would), and wait for the first
    postback accepted after the kill."""
    service, sentinels = failover.service, failover.sentinels
    frozen = list(service.workers)
    for worker in frozen:
        worker.signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(FREEZE)
        async with service.redis_client() as client:
            waiting = await backlog(client, await streams(client, service.prefix))
        await failover.lag.crash()  # the machine: no answer, nothing more sent
        sentinels.primary.kill9()
        killed = time.monotonic()
    finally:
        for worker in frozen:
            worker.signal(signal.SIGCONT)
    assert waiting > 0, "no log entry waited in Redis when the primary was killed"
    promoted = await sentinels.wait_promoted(failover.lag.port, FAILOVER_TIMEOUT)
    window["promoted"] = time.monotonic() - killed
    sentinels.restart_as_replica(sentinels.primary, promoted)
    await failover.lag.revive()
    await sentinels.wait_synced(sentinels.primary)
    window["replica back"] = time.monotonic() - killed
    window["first 200"] = await _recovered(load, killed)
    return (
        f"killed holding {waiting} entries not yet in Postgres; replica promoted"
        f" {window['promoted']:.1f} s, old primary back as its replica"
        f" {window['replica back']:.1f} s, first 200 {window['first 200']:.1f} s after the kill"
    )


def _headline(failover: Failover, load: Load, verdict: Verdict, window: dict[str, float]) -> str:
    """The figures of the failover: the mode, how long postbacks got no 200, and what
    the failover lost of what was acknowledged."""
    counts = load.tally.by_phase(FAILOVER)
    return "\n".join(
        [
            f"failover, CALLTAGS_WRITE_ACK={failover.write_ack}, replica"
            f" {REPLICATION_LAG * 1000:.0f} ms behind, 2 web processes, 2 workers",
            "unavailable (kill to first 200): "
            + (f"{window['first 200']:.1f} s" if "first 200" in window else "never back")
            + f"; postbacks without a 200 from {load.tally.unavailable_seconds(FAILOVER):.1f} s"
            f" of the phase ({counts['503']} x 503, {counts['conn_error']} connection errors,"
            f" {counts['timeout']} timeouts)",
            f"acknowledged postbacks lost: {len(verdict.lost)} of {verdict.accepted};"
            f" connects answered 201 lost: {len(verdict.calls_lost)} of {verdict.connects}",
        ]
    )
