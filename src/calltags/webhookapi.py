"""The admin API of outbound webhooks (Bearer CALLTAGS_ADMIN_TOKEN): webhooks made,
listed, changed, deleted and tested, and their deliveries listed (newest first, paged
as the other listings); and the deliveries' counts for /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request

from calltags import webhooks
from calltags.admin import path_id
from calltags.delivery import send_test
from calltags.errors import ApiError, StoreUnavailable
from calltags.operations import Api, Auth, Routes
from calltags.services import Services
from calltags.webhooks import (
    DeliveryFilters,
    DeliveryPage,
    NewWebhook,
    TestResult,
    Webhook,
    WebhookCreate,
    Webhooks,
    WebhookUpdate,
)
from calltags.webhookstore import WebhookNotFound, WebhookStore

log = logging.getLogger("calltags.webhooks")

ROUTES = Routes(Api.ADMIN, Auth.ADMIN)
_WEBHOOK = ("webhook_not_found",)
# Seconds from an event to its delivery.
DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
STATS_SECONDS = 15.0  # between two readings of the deliveries' counts for /metrics


def store(svc: Services) -> WebhookStore:
    return WebhookStore(svc.pool)


@contextlib.contextmanager
def missing_is_404() -> Iterator[None]:
    try:
        yield
    except WebhookNotFound as exc:
        raise ApiError("webhook_not_found", f"no webhook {exc.args[0]}") from exc


@ROUTES.route("POST", "/admin/webhooks", status=201)
async def create_webhook(svc: Services, request: Request, body: WebhookCreate) -> NewWebhook:
    """Create a webhook: the answer holds its signing secret, shown this once."""
    return await store(svc).create(body)


@ROUTES.route("GET", "/admin/webhooks")
async def list_webhooks(svc: Services, request: Request) -> Webhooks:
    """List webhooks (never their secrets); a disabled one says why."""
    return Webhooks(items=await store(svc).all())


@ROUTES.route("GET", "/admin/webhooks/{webhook_id}", errors=_WEBHOOK)
async def get_webhook(svc: Services, request: Request) -> Webhook:
    """A webhook."""
    with missing_is_404():
        return await store(svc).get(path_id(request, "webhook_id"))


@ROUTES.route("PATCH", "/admin/webhooks/{webhook_id}", errors=_WEBHOOK)
async def update_webhook(svc: Services, request: Request, body: WebhookUpdate) -> Webhook:
    """Change a webhook: its URL, events, filters; disable or enable it."""
    with missing_is_404():
        return await store(svc).update(path_id(request, "webhook_id"), body)


@ROUTES.route("DELETE", "/admin/webhooks/{webhook_id}", errors=_WEBHOOK)
async def delete_webhook(svc: Services, request: Request) -> Webhook:
    """Delete a webhook and its deliveries (those pending are not sent)."""
    with missing_is_404():
        return await store(svc).delete(path_id(request, "webhook_id"))


@ROUTES.route("POST", "/admin/webhooks/{webhook_id}/test", errors=_WEBHOOK)
async def test_webhook(svc: Services, request: Request) -> TestResult:
    """Send a webhook.test event now, once; the receiver's answer."""
    with missing_is_404():
        return await send_test(store(svc), svc.settings, path_id(request, "webhook_id"))


@ROUTES.route("GET", "/admin/webhooks/{webhook_id}/deliveries", errors=_WEBHOOK)
async def webhook_deliveries(
    svc: Services, request: Request, query: DeliveryFilters
) -> DeliveryPage:
    """A webhook's deliveries, newest first."""
    with missing_is_404():
        return await store(svc).deliveries(query, path_id(request, "webhook_id"))


@ROUTES.route("GET", "/admin/deliveries")
async def list_deliveries(svc: Services, request: Request, query: DeliveryFilters) -> DeliveryPage:
    """Deliveries of every webhook (of one call with call_uuid), newest first."""
    return await store(svc).deliveries(query)


# -- /metrics ------------------------------------------------------------------------------


class DeliveryStats(Collector):
    """The deliveries' counts by state and their event-to-delivery latency, read from
    Postgres in the background (`watch`): a scrape reads the last reading."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.within: list[int] = [0] * (len(DELIVERY_BUCKETS) + 1)  # the last: all
        self.total_seconds = 0.0

    async def watch(self, svc: Services, every: float = STATS_SECONDS) -> None:
        while True:
            try:
                self.counts, self.within, self.total_seconds = await store(svc).stats(
                    DELIVERY_BUCKETS
                )
            except StoreUnavailable as exc:
                log.warning("could not count webhook deliveries: %s", exc)
            await asyncio.sleep(every)

    def collect(self) -> Iterable[Metric]:
        states = GaugeMetricFamily(
            "calltags_webhook_deliveries",
            "Webhook deliveries by state (pending, delivered, failed)",
            labels=["state"],
        )
        for state in webhooks.STATES:
            states.add_metric([state], self.counts.get(state, 0))
        yield states
        bounds = [*map(repr, DELIVERY_BUCKETS), "+Inf"]
        latency = HistogramMetricFamily(
            "calltags_webhook_delivery_latency_seconds",
            "Time from an event to its delivery (delivered deliveries, tests aside)",
            buckets=[(b, float(n)) for b, n in zip(bounds, self.within, strict=True)],
            sum_value=self.total_seconds,
        )
        yield latency
