"""Prometheus metrics of this process (GET /metrics) — requests by API, route and HTTP
status, postback outcomes, postback and connect latency, and the postback log backlog.

Every app has a registry of its own, so that several apps in one process (tests) do not
collide. Counting a request or observing a latency costs a dict lookup or a bisect and
an increment: the bench does not see it."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from calltags.log import PostbackLog

UNMATCHED = "unmatched"  # the route label of a path no route matches (one label for all)
# Seconds from a request's arrival to its answer: routing has a few milliseconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LogCollector(Collector):
    """Reads the backlog the web process measures in the background (PostbackLog.watch)."""

    def __init__(self, log: PostbackLog):
        self.log = log

    def collect(self) -> Iterable[Metric]:
        last = self.log.last
        backlog = GaugeMetricFamily(
            "calltags_log_backlog_entries",
            "Entries in Redis waiting for the workers to move them into Postgres",
            labels=["stream"],
        )
        backlog.add_metric(["postbacks"], last.postbacks)
        backlog.add_metric(["calls"], last.calls)
        yield backlog
        yield GaugeMetricFamily(
            "calltags_log_oldest_entry_age_seconds",
            "Age of the oldest entry waiting in Redis: how far the workers lag",
            value=last.oldest_age_seconds(),
        )
        yield GaugeMetricFamily(
            "calltags_log_max_backlog_entries",
            "CALLTAGS_LOG_MAX_BACKLOG: past it postbacks are refused with 503",
            value=self.log.max_backlog,
        )
        yield GaugeMetricFamily(
            "calltags_log_backlog_full",
            "1 while postbacks are refused because the backlog is full",
            value=int(self.log.full),
        )
        yield CounterMetricFamily(
            "calltags_postbacks_refused",
            "Postbacks refused with 503 because the backlog was full (this process)",
            value=self.log.refused,
        )


class Latency:
    """A histogram of seconds, kept as plain counts: observing one costs a bisect and an
    increment (prometheus_client's Histogram takes a lock for each, several times the
    cost, on a path that has a few hundred µs in all)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last: above every bucket
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        running = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*LATENCY_BUCKETS, math.inf), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == math.inf else repr(bound), running))
        return buckets


class Metrics:
    """This process's request counts, postback outcomes and latencies. The event loop is
    the process's one thread, so they are plain ints, read when /metrics is scraped."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests: dict[tuple[str, str, str, int], int] = {}
        self.outcomes: dict[str, int] = {}
        self.postback_latency = Latency()
        self.connect_latency = Latency()
        self.registry.register(_Collector(self))

    def request(self, api: str, route: str, method: str, status: int) -> None:
        key = (api, route, method, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def outcome(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def watch_log(self, log: PostbackLog) -> None:
        self.registry.register(LogCollector(log))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Collector(Collector):
    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "calltags_http_requests",
            "Requests answered by this process, by API, route, method and HTTP status",
            labels=["api", "route", "method", "status"],
        )
        for (api, route, method, status), count in sorted(self.metrics.requests.items()):
            requests.add_metric([api, route, method, str(status)], count)
        yield requests
        outcomes = CounterMetricFamily(
            "calltags_postback_outcomes",
            "Postbacks answered, by status string (accepted) or error code (refused)",
            labels=["outcome"],
        )
        for outcome, count in sorted(self.metrics.outcomes.items()):
            outcomes.add_metric([outcome], count)
        yield outcomes
        latency = HistogramMetricFamily(
            "calltags_request_duration_seconds",
            "Time from a postback's or connect's arrival to its answer",
            labels=["operation"],
        )
        for operation, histogram in (
            ("postback", self.metrics.postback_latency),
            ("connect", self.metrics.connect_latency),
        ):
            latency.add_metric([operation], histogram.cumulative(), sum_value=histogram.total)
        yield latency
