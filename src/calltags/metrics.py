"""GET /metrics: Prometheus text for the web process, chiefly the postback log backlog."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from calltags.log import PostbackLog


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


def registry(log: PostbackLog) -> CollectorRegistry:
    """A registry of this app's own: several apps in one process do not collide."""
    found = CollectorRegistry(auto_describe=True)
    found.register(LogCollector(log))
    return found


async def endpoint(request: Request) -> Response:
    found: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(found), media_type=CONTENT_TYPE_LATEST)
