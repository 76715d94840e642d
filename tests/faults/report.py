"""The fault suite's figures as a table (printed, and shown again in the terminal summary
when output is captured)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .load import Tally

REPORTS: list[str] = []  # tables of this pytest run, for the terminal summary


@dataclass
class Fault:
    phase: str  # the phase label the load records its requests under
    detail: str = ""  # what happened, e.g. how many entries the killed worker held


@dataclass
class Verdict:
    """What the checks after the drain found."""

    accepted: int = 0
    exactly_once: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: dict[str, int] = field(default_factory=dict)
    logged_otherwise: list[str] = field(default_factory=list)  # 200 logged as non-200
    # Rows of postbacks that got no 200, by what the client got and what was logged.
    logged_unanswered: Counter[str] = field(default_factory=Counter)
    unknown_rows: int = 0  # rows with an fseq the load never sent
    connects: int = 0  # connects answered 201
    ends: int = 0  # ends answered 200
    calls_lost: list[str] = field(default_factory=list)  # 201 connects with no calls row
    calls_not_ended: list[str] = field(default_factory=list)  # 200 ends not completed there
    kept_calls: int = 0
    kept_calls_ok: int = 0
    kept_problems: list[str] = field(default_factory=list)


# (title, width) of the counted columns; the phase column is as wide as its longest label
_COLUMNS = {
    "s": 5, "sent": 6, "/s": 4, "200": 6, "503": 5, "conn err": 8, "timeout": 7,
    "p50 ms": 6, "max ms": 6,
}  # fmt: skip


def table(
    *,
    run: str,
    rate: float,
    phases: list[Fault],
    faults: int,
    tally: Tally,
    durations: dict[str, float],
    verdict: Verdict,
    seconds: float,
    drained_seconds: float | None,
    unexpected_exits: int,
    broke: str = "",
) -> str:
    width = max(len(f.phase) for f in phases)
    head = f"{'phase':<{width}}  " + "  ".join(f"{t:>{w}}" for t, w in _COLUMNS.items())
    head += f"  {'non-200 s':>9}  what happened"
    rule = "-" * (len(head) + 20)
    lines = [
        *([f"INCOMPLETE, the run broke off: {broke[:300]}"] if broke else []),
        f"fault suite, run {run}: {faults} faults, {rate:.0f} postbacks/s offered,"
        f" {seconds:.1f} s in all (postbacks counted in the phase they were answered in)",
        head,
        rule,
    ]
    totals: Counter[str] = Counter()
    for fault in phases:
        counts = tally.by_phase(fault.phase)
        totals.update(counts)
        spent = durations.get(fault.phase, 0.0)
        cells = {
            "s": f"{spent:.1f}",
            "sent": counts["sent"],
            "/s": f"{counts['sent'] / spent:.0f}" if spent else "-",
            "200": counts["200"],
            "503": counts["503"],
            "conn err": counts["conn_error"],
            "timeout": counts["timeout"],
            "p50 ms": f"{tally.latency_ms(fault.phase, 0.5):.0f}",
            "max ms": f"{tally.latency_ms(fault.phase, 1.0):.0f}",
        }
        lines.append(
            f"{fault.phase:<{width}}  "
            + "  ".join(f"{cells[t]:>{w}}" for t, w in _COLUMNS.items())
            + f"  {tally.unavailable_seconds(fault.phase):>9.1f}  {fault.detail}"
        )
    other = totals["sent"] - sum(totals[k] for k in ("200", "503", "conn_error", "timeout"))
    lines += [
        rule,
        "",
        f"faults injected          {faults}",
        f"postbacks sent           {totals['sent']}",
        f"accepted (200)           {verdict.accepted}",
        f"refused (503)            {totals['503']}",
        f"connection errors        {totals['conn_error']} (+{totals['timeout']} timeouts)",
        f"other answers            {other}",
        f"in Postgres exactly once {verdict.exactly_once}",
        f"lost                     {len(verdict.lost)}",
        f"duplicated               {len(verdict.duplicated)}",
        f"200 logged as non-200    {len(verdict.logged_otherwise)}",
        f"logged without a 200     {sum(verdict.logged_unanswered.values())}"
        + (f" ({_counts(verdict.logged_unanswered)})" if verdict.logged_unanswered else ""),
        f"HTTP 5xx other than 503  {len(tally.server_errors())}",
        f"calls connected (201)    {verdict.connects}, ended (200) {verdict.ends};"
        f" missing in Postgres {len(verdict.calls_lost)},"
        f" not completed there {len(verdict.calls_not_ended)}",
        f"calls keep their tags    {verdict.kept_calls_ok}/{verdict.kept_calls}",
        f"unexpected exits         {unexpected_exits} (processes that died unkilled; restarted)",
        f"load fell behind         {sum(tally.skipped.values())} ticks dropped"
        + (f" ({_counts(tally.skipped)})" if tally.skipped else ""),
        "drained after the load   "
        + (f"{drained_seconds:.1f} s" if drained_seconds is not None else "NOT DRAINED"),
    ]
    why = [
        f"  {fault.phase}: {_counts(failures, 3)}"
        for fault in phases
        if (failures := tally.failures(fault.phase))
    ]
    if why:
        lines += ["", "why postbacks got no 200 (most common first):", *why]
    return "\n".join(lines)


def _counts(counter: Counter[str], most: int | None = None) -> str:
    return "; ".join(f"{n} x {text}" for text, n in counter.most_common(most))
