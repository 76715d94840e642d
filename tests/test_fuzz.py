"""Hostile input: property tests of number parsing, and of the publisher API through
the app with a real key on real Redis and Postgres. Nothing may answer 5xx, and every
rejection is a JSON error with a code."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ADMIN
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from calltags import phone
from calltags.app import create_app
from calltags.config import Settings
from calltags.errors import ApiError

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@given(st.text(max_size=80))
@settings(max_examples=500, deadline=None)
def test_normalize_returns_e164_or_a_422(raw: str) -> None:
    try:
        e164 = phone.normalize(raw, "US")
    except ApiError as exc:
        assert exc.status == 422
        assert exc.code == "invalid_caller_number"
        return
    assert e164.startswith("+")
    assert e164[1:].isdigit()


@given(
    st.integers(min_value=200, max_value=999),
    st.integers(min_value=0, max_value=9999),
    st.sampled_from(
        [
            "({a}) {e}-{n}",
            "{a}-{e}-{n}",
            "1{a}{e}{n}",
            "+1 {a} {e} {n}",
            "tel:+1{a}{e}{n}",
            "{a}.{e}.{n}",
            "+1-{a}-{e}-{n}",
        ]
    ),
)
def test_every_format_of_a_number_gives_one_e164(exchange: int, line: int, form: str) -> None:
    raw = form.format(a="212", e=f"{exchange:03d}", n=f"{line:04d}")
    assert phone.normalize(raw, "US") == f"+1212{exchange:03d}{line:04d}"


@pytest.fixture(scope="module")
def http(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def secret(http: TestClient) -> str:
    publisher = http.post("/admin/publishers", json={"name": "fuzz"}, headers=ADMIN).json()
    key = http.post(
        f"/admin/publishers/{publisher['id']}/keys", json={"name": "fuzz"}, headers=ADMIN
    ).json()
    value: str = key["key"]
    return value


def _check(response: Any) -> None:
    assert response.status_code < 500, response.text
    body = response.json()
    if response.status_code >= 400:
        assert isinstance(body.get("error"), str) and body["error"]
        assert isinstance(body.get("message"), str)
    else:
        assert body["status"] in (
            "call not found, tags stored",
            "call in progress, tags applied",
            "completed call found, tags applied",
        )


_names = st.one_of(
    st.from_regex(r"[A-Za-z0-9_.\-]{1,64}", fullmatch=True),
    st.text(max_size=70),
)
_values = st.text(max_size=1100)


@given(params=st.dictionaries(_names, _values, max_size=12), caller=st.text(max_size=30))
@FUZZ
def test_query_parameters_never_5xx(
    http: TestClient, secret: str, params: dict[str, str], caller: str
) -> None:
    query = {**params, "key": secret, "caller_number": caller or "2125550123"}
    _check(http.get("/data_writing", params=query))


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(body=st.dictionaries(_names, _json, max_size=10))
@FUZZ
def test_json_bodies_never_5xx(http: TestClient, secret: str, body: dict[str, Any]) -> None:
    payload = {"caller_number": "2125550124", **body, "key": secret}
    _check(http.post("/data_writing", json=payload))


@given(
    raw=st.binary(max_size=400),
    content_type=st.sampled_from(
        [
            "application/json",
            "application/x-www-form-urlencoded",
            "text/plain",
            "",
            "multipart/form-data",
        ]
    ),
)
@FUZZ
def test_raw_bodies_never_5xx(http: TestClient, secret: str, raw: bytes, content_type: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = http.post(
        f"/data_writing/{secret}?caller_number=2125550125", content=raw, headers=headers
    )
    _check(response)


def test_deeply_nested_json_is_a_4xx(http: TestClient, secret: str) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    response = http.post(
        "/data_writing",
        content=f'{{"key":"{secret}","caller_number":"2125550126","t":{deep}}}',
        headers={"content-type": "application/json"},
    )
    assert 400 <= response.status_code < 500
    assert response.json()["error"] in ("invalid_body", "invalid_tag")


def test_thousands_of_parameters_are_a_4xx(http: TestClient, secret: str) -> None:
    query = "&".join(f"t{n}=v" for n in range(5000))
    response = http.get(f"/data_writing?key={secret}&caller_number=2125550127&{query}")
    assert 400 <= response.status_code < 500
    assert response.json()["error"]


def test_invalid_utf8_and_control_characters(http: TestClient, secret: str) -> None:
    response = http.post(
        f"/data_writing/{secret}",
        content=b"caller_number=2125550128&note=%FF%FE",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    _check(response)
    response = http.get(
        "/data_writing",
        params={"key": secret, "caller_number": "2125550128", "note": "a\r\nSet-Cookie: x=1\x00"},
    )
    _check(response)
    assert "set-cookie" not in response.headers
