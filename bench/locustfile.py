"""Realistic load for calltags: publishers posting tags, routing connecting, reading and
ending calls. Response bodies are checked, not just status codes.

    locust -f bench/locustfile.py --host http://localhost:8000     # web UI
    make bench-locust        # headless, CSV and HTML reports in bench/results/

Environment:
    CALLTAGS_KEYS           comma-separated postback keys to post with (required)
    CALLTAGS_ROUTING_TOKEN  Bearer token for the routing API (required for routing users)
    CALLTAGS_CALLERS        size of the caller number pool (default 100000)
    CALLTAGS_MIX            publisher:routing user weights (default 4:1)
"""

from __future__ import annotations

import os
import random
from typing import Any

from locust import FastHttpUser, between, task

KEYS = [k for k in os.environ.get("CALLTAGS_KEYS", "").split(",") if k]
ROUTING_TOKEN = os.environ.get("CALLTAGS_ROUTING_TOKEN", "")
CALLERS = int(os.environ.get("CALLTAGS_CALLERS", "100000"))
PUBLISHER_WEIGHT, ROUTING_WEIGHT = (
    int(w) for w in os.environ.get("CALLTAGS_MIX", "4:1").split(":", 1)
)
STATUSES = {
    "call not found, tags stored",
    "call in progress, tags applied",
    "completed call found, tags applied",
}
TAG_NAMES = ["utm_source", "utm_campaign", "prequalified", "age", "state", "zip", "insured",
             "debt_amount", "lead_id", "sub_id", "click_id", "score"]  # fmt: skip
FORMATS = [
    lambda e, n: f"+1212{e:03d}{n:04d}",
    lambda e, n: f"(212) {e:03d}-{n:04d}",
    lambda e, n: f"212-{e:03d}-{n:04d}",
    lambda e, n: f"1212{e:03d}{n:04d}",
    lambda e, n: f"+1 212 {e:03d} {n:04d}",
    lambda e, n: f"tel:+1212{e:03d}{n:04d}",
]


def caller() -> tuple[str, str]:
    """A caller from the pool in a random format, and its E.164 form."""
    index = random.randrange(CALLERS)
    exchange, line = 200 + index // 10_000 % 800, index % 10_000
    return random.choice(FORMATS)(exchange, line), f"+1212{exchange:03d}{line:04d}"


def tags() -> dict[str, str]:
    names = random.sample(TAG_NAMES, random.randint(1, 10))
    return {name: str(random.randint(1, 100_000)) for name in names}


class Publisher(FastHttpUser):
    weight = PUBLISHER_WEIGHT
    wait_time = between(0.0, 0.05)

    def _check(self, response: Any, expected_caller: str, sent: dict[str, str]) -> None:
        try:
            body = response.json()
        except ValueError:
            response.failure(f"not JSON: {response.text[:200]}")
            return
        if response.status_code != 200:
            response.failure(f"{response.status_code} {body.get('error')}")
        elif body.get("status") not in STATUSES:
            response.failure(f"unexpected status {body.get('status')!r}")
        elif body.get("caller_number") != expected_caller:
            response.failure(f"caller {body.get('caller_number')} != {expected_caller}")
        elif body.get("tag_values") != sent:
            response.failure("tag_values differ from what was sent")

    @task(3)
    def get_postback(self) -> None:
        raw, e164 = caller()
        sent = tags()
        params = {"key": random.choice(KEYS), "caller_number": raw, **sent}
        with self.client.get(
            "/data_writing", params=params, name="GET /data_writing", catch_response=True
        ) as response:
            self._check(response, e164, sent)

    @task(2)
    def post_json(self) -> None:
        raw, e164 = caller()
        sent = tags()
        with self.client.post(
            f"/data_writing/{random.choice(KEYS)}",
            json={"caller_number": raw, **sent},
            name="POST /data_writing/{key} json",
            catch_response=True,
        ) as response:
            self._check(response, e164, sent)

    @task(1)
    def post_form(self) -> None:
        raw, e164 = caller()
        sent = tags()
        with self.client.post(
            "/data_writing",
            data={"key": random.choice(KEYS), "caller_number": raw, **sent},
            name="POST /data_writing form",
            catch_response=True,
        ) as response:
            self._check(response, e164, sent)


class Routing(FastHttpUser):
    weight = ROUTING_WEIGHT
    wait_time = between(0.0, 0.1)

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Bearer {ROUTING_TOKEN}"}

    @task
    def call(self) -> None:
        raw, e164 = caller()
        with self.client.post(
            "/calls",
            json={"caller_number": raw, "campaign": "load"},
            headers=self.headers,
            name="POST /calls",
            catch_response=True,
        ) as response:
            body = response.json()
            if response.status_code != 201 or body.get("state") != "in_progress":
                response.failure(f"connect: {response.status_code} {body}")
                return
            if body.get("caller_number") != e164 or not isinstance(body.get("tags"), dict):
                response.failure(f"connect body: {body}")
                return
        call_uuid = body["call_uuid"]
        with self.client.get(
            f"/calls/{call_uuid}", headers=self.headers, name="GET /calls/{uuid}",
            catch_response=True,
        ) as response:  # fmt: skip
            if response.status_code != 200 or response.json().get("call_uuid") != call_uuid:
                response.failure(f"read: {response.status_code}")
        with self.client.post(
            f"/calls/{call_uuid}/end", headers=self.headers, name="POST /calls/{uuid}/end",
            catch_response=True,
        ) as response:  # fmt: skip
            if response.status_code != 200 or response.json().get("state") != "completed":
                response.failure(f"end: {response.status_code}")
