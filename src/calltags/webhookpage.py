"""The console's webhooks: /console/webhooks lists them (a disabled one says why) with a
form to add one, whose signing secret is shown once on the page that answers the POST;
/console/webhooks/{id} shows one with its deliveries (newest first, paged on), sends it a
test event, disables and enables it. A call's page lists the call's deliveries
(`deliveries_of_call`). Receivers' answers are shown escaped, as every value is."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

import msgspec
from msgspec import Meta
from starlette.responses import Response

from calltags import webhooks
from calltags.admin import path_id
from calltags.delivery import send_test
from calltags.errors import ApiError
from calltags.models import Body, Campaign, Id, Name, convert
from calltags.operations import Api, Auth, Routes
from calltags.pages import PAGE_LIMIT, Page, Refusal, listing, redirect
from calltags.webhookapi import missing_is_404, store
from calltags.webhooks import (
    DeliveryFilters,
    DeliveryPage,
    Events,
    TestResult,
    WebhookCreate,
    WebhookUpdate,
    WebhookUrl,
)

PATH = "/console/webhooks"
ROUTES = Routes(Api.ADMIN, Auth.SESSION)
_WEBHOOK = ("webhook_not_found",)


class WebhookForm(Body):
    """The console's "Add a webhook" form: WebhookCreate with its tag filters written
    as text (NAME, NAME=VALUE or NAME=A|B, separated by spaces or commas)."""

    name: Name
    url: WebhookUrl
    events: Events
    method: str = "POST"
    publisher_id: Id | None = None
    campaign: Campaign | None = None
    tag_filters: Annotated[list[str], Meta(max_length=webhooks.MAX_TAG_FILTERS)] = msgspec.field(
        default_factory=list
    )

    def create(self) -> WebhookCreate:
        """The webhook it asks for, checked as the API checks it (ApiError 422)."""
        fields: dict[str, Any] = {
            name: getattr(self, name) for name in self.__struct_fields__ if name != "tag_filters"
        }
        fields["tag_filters"] = [webhooks.tag_filter(text) for text in self.tag_filters]
        return convert(fields, WebhookCreate)


@ROUTES.route("GET", PATH, html=True)
async def webhooks_page(page: Page) -> Response:
    """Webhooks: their URL, events, filters and state; a form to add one."""
    return await _webhooks(page)


async def _webhooks(
    page: Page, refused: Refusal | None = None, created: webhooks.NewWebhook | None = None
) -> Response:
    context = {
        "section": "webhooks",
        "webhooks": await store(page.svc).all(),
        "refused": refused,
        "created": created,
        "events": webhooks.EVENTS,
    }
    return page.render("webhooks.html", context, refused.status if refused else 200)


@ROUTES.route("POST", PATH, html=True, form=WebhookForm)
async def add_webhook(page: Page) -> Response:
    """Add a webhook; its signing secret is shown on the page answering, this once."""
    try:
        new = page.form(WebhookForm).create()
    except ApiError as exc:
        return await _webhooks(page, page.refusal("add_webhook", exc))
    return await _webhooks(page, created=await store(page.svc).create(new))


@ROUTES.route("GET", PATH + "/{webhook_id}", html=True, query=DeliveryFilters, errors=_WEBHOOK)
async def webhook_page(page: Page) -> Response:
    """A webhook and its deliveries, newest first."""
    return await _webhook(page)


async def _webhook(page: Page, tested: TestResult | None = None) -> Response:
    webhook_id = path_id(page.request, "webhook_id")
    with missing_is_404():
        webhook = await store(page.svc).get(webhook_id)

    async def read(query: DeliveryFilters, region: str) -> DeliveryPage:
        return await store(page.svc).deliveries(query, webhook_id)

    context = {"section": "webhooks", "webhook": webhook, "tested": tested}
    context["states"] = webhooks.STATES
    if tested is not None:  # the answer to the test's POST: the newest deliveries
        newest = await read(DeliveryFilters(limit=PAGE_LIMIT), "")
        path = f"{PATH}/{webhook_id}"
        cursor = newest.next_cursor
        more = {"next_url": f"{path}?{urlencode({'cursor': cursor})}" if cursor else None}
        context |= {"deliveries": newest.items, "filters": {}, "message": None, **more}
        return page.render("webhook.html", {**context, "first_page": True}, 200)
    found = await listing(page, DeliveryFilters, read)
    context |= {"deliveries": found.items, **found.context}
    return page.render("webhook.html", context, found.status)


@ROUTES.route("POST", PATH + "/{webhook_id}/test", html=True, errors=_WEBHOOK)
async def test_webhook(page: Page) -> Response:
    """Send the webhook a webhook.test event now; what the receiver answered."""
    with missing_is_404():
        webhook_id = path_id(page.request, "webhook_id")
        tested = await send_test(store(page.svc), page.svc.settings, webhook_id)
    return await _webhook(page, tested)


async def _switch(page: Page, enabled: bool) -> Response:
    webhook_id = path_id(page.request, "webhook_id")
    with missing_is_404():
        await store(page.svc).update(webhook_id, WebhookUpdate(enabled=enabled))
    return redirect(f"{PATH}/{webhook_id}")


@ROUTES.route("POST", PATH + "/{webhook_id}/disable", redirect=True, errors=_WEBHOOK)
async def disable_webhook(page: Page) -> Response:
    """Disable a webhook: it makes no new deliveries."""
    return await _switch(page, False)


@ROUTES.route("POST", PATH + "/{webhook_id}/enable", redirect=True, errors=_WEBHOOK)
async def enable_webhook(page: Page) -> Response:
    """Enable a webhook again (its count of failures in a row starts again)."""
    return await _switch(page, True)


async def deliveries_of_call(page: Page, call_uuid: str) -> DeliveryPage:
    """The newest deliveries of a call, for its page."""
    query = DeliveryFilters(call_uuid=call_uuid, limit=PAGE_LIMIT)
    return await store(page.svc).deliveries(query)
