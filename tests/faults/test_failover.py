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

import time

from .conftest import REPLICATION_LAG, Failover
from .load import Load
from .report import Fault, Verdict
from .test_faults import (
    COOL,
    WARM,
    _recovered,
    _steady,
    assert_answers,
    assert_nothing_lost,
    kill_while_entries_wait,
    run_load,
)

WARM_UP = 3.0  # s of load before the failover
SETTLE = 3.0  # s of load once postbacks are accepted again
FAILOVER_TIMEOUT = 30.0  # s the Sentinels may take to promote the replica

FAILOVER = "primary kill -9, failover"


async def test_a_failover_loses_nothing_acknowledged_by_replicas(failover: Failover) -> None:
    service = failover.service
    phases = [Fault(WARM)]
    window: dict[str, float] = {}

    async def inject(load: Load) -> None:
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

    load, verdict, drained, leftover = await run_load(
        service, phases, inject, lambda load, verdict: _headline(failover, load, verdict, window)
    )
    assert drained is not None, f"{leftover}\n{service.tails()}"
    assert_answers(load, verdict)
    assert not service.unexpected_exits, "\n\n".join(service.unexpected_exits)
    if failover.write_ack == "replica":  # what the primary alone loses is printed, only
        assert_nothing_lost(verdict)


async def _fail_over(failover: Failover, load: Load, window: dict[str, float]) -> str:
    """Freeze the workers, kill the primary with what it had not sent its replica, let
    the Sentinels promote the replica, start the old primary again as a replica of the
    new one (as a process manager that asks the Sentinels would), and wait for the first
    postback accepted after the kill."""
    sentinels = failover.sentinels

    async def kill() -> None:
        await failover.lag.cut()  # the machine: no answer, nothing more sent
        sentinels.primary.kill9()

    waiting, killed = await kill_while_entries_wait(failover.service, kill)
    promoted = await sentinels.wait_promoted(failover.lag.port, FAILOVER_TIMEOUT)
    window["promoted"] = time.monotonic() - killed
    sentinels.restart_as_replica(sentinels.primary, promoted)
    await failover.lag.open()
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
