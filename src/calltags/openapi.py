"""GET /openapi.json: the OpenAPI 3.1 description of every route."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from calltags import __version__
from calltags.http import JSONResponse

_ERROR = {"$ref": "#/components/schemas/Error"}
_SECURED_ROUTING: list[dict[str, list[str]]] = [{"routingToken": []}, {"adminToken": []}]
_SECURED_ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}]


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(code): {
            "description": "error",
            "content": {"application/json": {"schema": _ERROR}},
        }
        for code in codes
    }


def _json_body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _ok(status: int, schema: dict[str, Any], description: str = "success") -> dict[str, Any]:
    return {
        str(status): {
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    }


_POSTBACK_PARAMS = [
    {"name": "key", "in": "query", "required": False, "schema": {"type": "string"}},
    {"name": "caller_number", "in": "query", "required": False, "schema": {"type": "string"}},
    {"name": "call_uuid", "in": "query", "required": False, "schema": {"type": "string"}},
    {
        "name": "tags",
        "in": "query",
        "required": False,
        "style": "form",
        "explode": True,
        "description": "every other parameter is a tag: name=value",
        "schema": {"type": "object", "additionalProperties": {"type": "string"}},
    },
]
_POSTBACK_BODY = {
    "required": False,
    "content": {
        "application/json": {"schema": {"type": "object", "additionalProperties": True}},
        "application/x-www-form-urlencoded": {
            "schema": {"type": "object", "additionalProperties": {"type": "string"}}
        },
    },
}
_POSTBACK_RESPONSES = {
    **_ok(200, {"$ref": "#/components/schemas/PostbackResult"}),
    **_errors(400, 401, 403, 404, 413, 415, 422, 429, 503),
}


def _postback_operations(with_key: bool) -> dict[str, Any]:
    params = list(_POSTBACK_PARAMS)
    if with_key:
        params = [
            {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}},
            *params[1:],
        ]
    return {
        "get": {
            "summary": "Write tags for a caller",
            "parameters": params,
            "responses": _POSTBACK_RESPONSES,
        },
        "post": {
            "summary": "Write tags for a caller",
            "parameters": params,
            "requestBody": _POSTBACK_BODY,
            "responses": _POSTBACK_RESPONSES,
        },
    }


_CALL_UUID_PATH = [
    {"name": "call_uuid", "in": "path", "required": True, "schema": {"type": "string"}}
]
_ID_PATH = {"in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_TIME = {"type": "string", "format": "date-time"}
_PAGING = [
    _query(
        "limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "page size"
    ),
    _query("cursor", {"type": "string"}, "next_cursor of the previous page"),
]
_LISTING_CALLER = _query("caller_number", {"type": "string"}, "any number format")


def _page_of(schema: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": {"$ref": f"#/components/schemas/{schema}"}},
            "next_cursor": {"type": ["string", "null"], "description": "null on the last page"},
        },
    }


_LOG_PAGE_FILTERS = (
    "publisher_id", "key_id", "caller_number", "status", "since", "until", "cursor",
)  # fmt: skip
_HTML = {"description": "an HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}
_REDIRECT = {"description": "redirect (303)"}

# The fields a key create and a key PATCH share.
_KEY_SETTINGS: dict[str, Any] = {
    "end_call_cutoff_seconds": {"type": "integer", "minimum": 0, "maximum": 2592000},
    "storage_duration_seconds": {"type": "integer", "minimum": 60, "maximum": 2592000},
    "require_signature": {"type": "boolean"},
    "allowed_cidrs": {
        "type": "array",
        "maxItems": 100,
        "items": {"type": "string", "description": "CIDR, e.g. 203.0.113.0/24"},
    },
    "rate_limit_per_second": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1e6},
    "rate_limit_burst": {"type": ["integer", "null"], "minimum": 1},
}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "calltags", "version": __version__},
    "paths": {
        "/data_writing": _postback_operations(with_key=False),
        "/data_writing/{key}": _postback_operations(with_key=True),
        "/calls": {
            "post": {
                "summary": "Connect a call, claiming the caller's pending tags",
                "security": _SECURED_ROUTING,
                "requestBody": _json_body({"$ref": "#/components/schemas/ConnectRequest"}),
                "responses": {
                    **_ok(201, {"$ref": "#/components/schemas/Call"}, "call started"),
                    **_ok(200, {"$ref": "#/components/schemas/Call"}, "the call already existed"),
                    **_errors(400, 401, 409, 413, 422, 503),
                },
            }
        },
        "/calls/{call_uuid}": {
            "get": {
                "summary": "Read a call and its tags",
                "security": _SECURED_ROUTING,
                "parameters": _CALL_UUID_PATH,
                "responses": {
                    **_ok(200, {"$ref": "#/components/schemas/Call"}),
                    **_errors(401, 404, 503),
                },
            }
        },
        "/calls/{call_uuid}/end": {
            "post": {
                "summary": "Complete a call; each key's end-call cut-off starts now",
                "security": _SECURED_ROUTING,
                "parameters": _CALL_UUID_PATH,
                "responses": {
                    **_ok(200, {"$ref": "#/components/schemas/Call"}),
                    **_errors(401, 404, 503),
                },
            }
        },
        "/admin/publishers": {
            "post": {
                "summary": "Create a publisher",
                "security": _SECURED_ADMIN,
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1, "maxLength": 200}
                        },
                    }
                ),
                "responses": {
                    **_ok(201, {"$ref": "#/components/schemas/Publisher"}),
                    **_errors(400, 401, 413, 422, 503),
                },
            },
            "get": {
                "summary": "List publishers",
                "security": _SECURED_ADMIN,
                "responses": {
                    **_ok(
                        200,
                        {
                            "type": "object",
                            "properties": {
                                "items": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Publisher"},
                                }
                            },
                        },
                    ),
                    **_errors(401, 503),
                },
            },
        },
        "/admin/publishers/{publisher_id}/keys": {
            "post": {
                "summary": "Create a postback key; the secret is in this response only",
                "security": _SECURED_ADMIN,
                "parameters": [{"name": "publisher_id", **_ID_PATH}],
                "requestBody": _json_body({"$ref": "#/components/schemas/KeyCreate"}),
                "responses": {
                    **_ok(201, {"$ref": "#/components/schemas/Key"}),
                    **_errors(400, 401, 404, 413, 422, 503),
                },
            },
            "get": {
                "summary": "List a publisher's keys (never the secret)",
                "security": _SECURED_ADMIN,
                "parameters": [{"name": "publisher_id", **_ID_PATH}],
                "responses": {
                    **_ok(
                        200,
                        {
                            "type": "object",
                            "properties": {
                                "items": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Key"},
                                }
                            },
                        },
                    ),
                    **_errors(401, 404, 503),
                },
            },
        },
        "/admin/keys/{key_id}/rotate": {
            "post": {
                "summary": "A new secret for the key; the old one works for grace_seconds",
                "security": _SECURED_ADMIN,
                "parameters": [{"name": "key_id", **_ID_PATH}],
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "properties": {
                            "grace_seconds": {"type": "integer", "minimum": 0, "maximum": 2592000}
                        },
                    },
                    required=False,
                ),
                "responses": {
                    **_ok(200, {"$ref": "#/components/schemas/Key"}),
                    **_errors(400, 401, 404, 413, 422, 503),
                },
            }
        },
        "/admin/keys/{key_id}": {
            "patch": {
                "summary": "Pause, resume, rename or change a key's durations",
                "security": _SECURED_ADMIN,
                "parameters": [{"name": "key_id", **_ID_PATH}],
                "requestBody": _json_body({"$ref": "#/components/schemas/KeyUpdate"}),
                "responses": {
                    **_ok(200, {"$ref": "#/components/schemas/Key"}),
                    **_errors(400, 401, 404, 413, 422, 503),
                },
            },
            "delete": {
                "summary": "Revoke a key; it stops working within 1 s",
                "security": _SECURED_ADMIN,
                "parameters": [{"name": "key_id", **_ID_PATH}],
                "responses": {
                    **_ok(200, {"$ref": "#/components/schemas/Key"}),
                    **_errors(401, 404, 503),
                },
            },
        },
        "/admin/postbacks": {
            "get": {
                "summary": "The postback log, newest first",
                "security": _SECURED_ADMIN,
                "parameters": [
                    _query("publisher_id", {"type": "integer"}, "publisher of the key"),
                    _query("key_id", {"type": "integer"}, "postback key"),
                    _LISTING_CALLER,
                    _query(
                        "status",
                        {"type": "string"},
                        "accepted, rejected, a status string or an error code",
                    ),
                    _query("since", _TIME, "received at or after (ISO 8601; UTC if no offset)"),
                    _query("until", _TIME, "received before (ISO 8601; UTC if no offset)"),
                    *_PAGING,
                ],
                "responses": {**_ok(200, _page_of("PostbackLogEntry")), **_errors(401, 422, 503)},
            }
        },
        "/admin/calls": {
            "get": {
                "summary": "Call records with their final tags, newest started first",
                "security": _SECURED_ADMIN,
                "parameters": [
                    _LISTING_CALLER,
                    _query("publisher_id", {"type": "string"}, "as given by routing"),
                    _query("campaign", {"type": "string"}, "as given by routing"),
                    _query("state", {"type": "string", "enum": ["in_progress", "completed"]}, ""),
                    _query("since", _TIME, "started at or after"),
                    _query("until", _TIME, "started before"),
                    *_PAGING,
                ],
                "responses": {**_ok(200, _page_of("CallRecord")), **_errors(401, 422, 503)},
            }
        },
        "/admin/log": {
            "get": {
                "summary": "The log page (HTML) for the account manager; redirects to sign-in",
                "parameters": [
                    _query(name, {"type": "string"}, "as in /admin/postbacks")
                    for name in _LOG_PAGE_FILTERS
                ],
                "responses": {"200": _HTML, "303": _REDIRECT, "422": _HTML},
            }
        },
        "/admin/login": {
            "get": {"summary": "Sign-in form of the log page", "responses": {"200": _HTML}},
            "post": {
                "summary": "Sign in with the admin token: sets the session cookie",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {
                                "type": "object",
                                "required": ["token"],
                                "properties": {"token": {"type": "string"}},
                            }
                        }
                    },
                },
                "responses": {"303": _REDIRECT, "401": _HTML},
            },
        },
        "/admin/logout": {
            "post": {
                "summary": "Sign out: clears the session cookie",
                "responses": {"303": _REDIRECT},
            }
        },
        "/healthz": {"get": {"summary": "Liveness", "responses": _ok(200, {"type": "object"})}},
        "/readyz": {
            "get": {
                "summary": "Readiness: Redis and Postgres reachable",
                "responses": {
                    **_ok(200, {"type": "object"}),
                    "503": {"description": "a store is unreachable"},
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics: postback log backlog, its oldest entry's age",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {"summary": "This document", "responses": _ok(200, {"type": "object"})}
        },
    },
    "components": {
        "securitySchemes": {
            "routingToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "CALLTAGS_ROUTING_TOKEN",
            },
            "adminToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "CALLTAGS_ADMIN_TOKEN",
            },
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "message"],
                "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
            },
            "PostbackResult": {
                "type": "object",
                "required": ["tag_values", "caller_number", "status"],
                "properties": {
                    "tag_values": {"type": "object", "additionalProperties": {"type": "string"}},
                    "caller_number": {"type": "string"},
                    "status": {
                        "type": "string",
                        "enum": [
                            "call not found, tags stored",
                            "call in progress, tags applied",
                            "completed call found, tags applied",
                        ],
                    },
                    "call_uuid": {"type": "string"},
                    "expires_at": {"type": "string", "format": "date-time"},
                },
            },
            "ConnectRequest": {
                "type": "object",
                "required": ["caller_number"],
                "properties": {
                    "caller_number": {"type": "string"},
                    "call_uuid": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$"},
                    "publisher_id": {"type": "string", "maxLength": 64},
                    "campaign": {"type": "string", "maxLength": 200},
                },
            },
            "Call": {
                "type": "object",
                "required": [
                    "call_uuid",
                    "caller_number",
                    "state",
                    "tags",
                    "tag_sources",
                    "started_at",
                ],
                "properties": {
                    "call_uuid": {"type": "string"},
                    "caller_number": {"type": "string"},
                    "state": {"type": "string", "enum": ["in_progress", "completed"]},
                    "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                    "tag_sources": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "properties": {
                                "publisher_id": {"type": "integer"},
                                "key_id": {"type": "integer"},
                                "set_at": {"type": "string", "format": "date-time"},
                            },
                        },
                    },
                    "started_at": {"type": "string", "format": "date-time"},
                    "ended_at": {"type": "string", "format": "date-time"},
                    "publisher_id": {"type": ["string", "null"]},
                    "campaign": {"type": ["string", "null"]},
                },
            },
            "PostbackLogEntry": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "received_at": _TIME,
                    "method": {"type": "string"},
                    "publisher_id": {"type": ["integer", "null"]},
                    "key_id": {"type": ["integer", "null"]},
                    "key_prefix": {
                        "type": ["string", "null"],
                        "description": "first characters of an unknown key",
                    },
                    "caller_raw": {"type": ["string", "null"]},
                    "caller_number": {"type": ["string", "null"]},
                    "call_uuid": {"type": ["string", "null"]},
                    "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                    "status": {"type": ["string", "null"]},
                    "error": {"type": ["string", "null"]},
                    "http_status": {"type": "integer"},
                    "remote_addr": {"type": ["string", "null"]},
                    "user_agent": {"type": ["string", "null"]},
                    "latency_us": {"type": ["integer", "null"]},
                },
            },
            "CallRecord": {
                "type": "object",
                "properties": {
                    "call_uuid": {"type": "string"},
                    "caller_number": {"type": "string"},
                    "state": {"type": "string", "enum": ["in_progress", "completed"]},
                    "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                    "tag_sources": {"type": "object"},
                    "started_at": _TIME,
                    "ended_at": {"type": ["string", "null"], "format": "date-time"},
                    "publisher_id": {"type": ["string", "null"]},
                    "campaign": {"type": ["string", "null"]},
                    "updated_at": _TIME,
                },
            },
            "Publisher": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "name": {"type": "string"},
                    "created_at": {"type": "string", "format": "date-time"},
                },
            },
            "KeyCreate": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 200},
                    "type": {"type": "string", "enum": ["call_data_writing"]},
                    **_KEY_SETTINGS,
                },
            },
            "KeyUpdate": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 200},
                    "paused": {"type": "boolean"},
                    **_KEY_SETTINGS,
                },
            },
            "Key": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "publisher_id": {"type": "integer"},
                    "name": {"type": "string"},
                    "type": {"type": "string"},
                    "key": {"type": "string", "description": "the secret, at creation only"},
                    "example_url": {"type": "string", "description": "at creation only"},
                    "key_prefix": {"type": "string"},
                    "end_call_cutoff_seconds": {"type": "integer"},
                    "storage_duration_seconds": {"type": "integer"},
                    "paused": {"type": "boolean"},
                    "revoked": {"type": "boolean"},
                    "revoked_at": {"type": ["string", "null"], "format": "date-time"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "last_used_at": {"type": ["string", "null"], "format": "date-time"},
                    "signing_secret": {
                        "type": "string",
                        "description": "HMAC secret for signed postbacks, at creation only",
                    },
                    "previous_key_valid_until": {"type": ["string", "null"], "format": "date-time"},
                    "require_signature": {"type": "boolean"},
                    "allowed_cidrs": {"type": "array", "items": {"type": "string"}},
                    "rate_limit_per_second": {"type": ["number", "null"]},
                    "rate_limit_burst": {"type": ["integer", "null"]},
                },
            },
        },
    },
}


async def endpoint(request: Request) -> Response:
    return JSONResponse(SPEC)
