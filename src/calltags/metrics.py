"""Prometheus metrics of this process (GET /metrics) — requests by API, route and HTTP
status, postback outcomes, postback and connect latency, and the postback log backlog.

Every app has a registry of its own, so that several apps in one process (tests) do not
collide; the labelled children are looked up once and kept, so counting a request costs
a dict lookup and an increment."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client import Histogram as _Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
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


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "calltags_http_requests",
            "Requests answered by this process, by API, route, method and HTTP status",
            ["api", "route", "method", "status"],
            registry=self.registry,
        )
        self._outcomes = Counter(
            "calltags_postback_outcomes",
            "Postbacks answered, by status string (accepted) or error code (refused)",
            ["outcome"],
            registry=self.registry,
        )
        self._latency = _Histogram(
            "calltags_request_duration_seconds",
            "Time from a postback's or connect's arrival to its answer",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, str, str, int], Counter] = {}
        self._outcome_children: dict[str, Counter] = {}
        self.postback_latency = self._latency.labels("postback")
        self.connect_latency = self._latency.labels("connect")

    def request(self, api: str, route: str, method: str, status: int) -> None:
        key = (api, route, method, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._requests.labels(api, route, method, str(status))
            self._request_children[key] = child
        child.inc()

    def outcome(self, outcome: str) -> None:
        child = self._outcome_children.get(outcome)
        if child is None:
            child = self._outcome_children[outcome] = self._outcomes.labels(outcome)
        child.inc()

    def watch_log(self, log: PostbackLog) -> None:
        self.registry.register(LogCollector(log))

    def render(self) -> bytes:
        return generate_latest(self.registry)
