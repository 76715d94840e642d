"""GET /openapi.json: the OpenAPI 3.1 document, made from the route table (every API's
operations) and the models — each body's and answer's JSON Schema is msgspec's, each
error response lists the codes of the error table the operation may answer."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from msgspec import Struct

from calltags import __version__
from calltags.errors import ERRORS
from calltags.models import Error
from calltags.operations import Auth, Operation
from calltags.session import CSRF_HEADER, SESSION_COOKIE

_REF = "#/components/schemas/{name}"
_SECURITY: dict[Auth, list[dict[str, list[str]]]] = {
    Auth.ROUTING: [{"routingToken": []}, {"adminToken": []}],
    # The admin API from a console page: the session cookie with its CSRF token.
    Auth.ADMIN: [{"adminToken": []}, {"sessionCookie": [], "csrfToken": []}],
    Auth.SESSION: [{"sessionCookie": []}, {"adminToken": []}],
}
_SCHEMES = {
    "routingToken": {"type": "http", "scheme": "bearer", "description": "CALLTAGS_ROUTING_TOKEN"},
    "adminToken": {"type": "http", "scheme": "bearer", "description": "CALLTAGS_ADMIN_TOKEN"},
    "sessionCookie": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
    "csrfToken": {"type": "apiKey", "in": "header", "name": CSRF_HEADER},
}
_FORM_OF_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}


def _ref(model: type[Struct]) -> dict[str, str]:
    return {"$ref": _REF.format(name=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error_codes(op: Operation) -> list[str]:
    """Every code of the error table the operation may answer."""
    codes = list(op.errors)
    if op.auth in (Auth.ROUTING, Auth.ADMIN):
        codes.append("unauthorized")
    if op.body is not None or op.form is not None:
        codes += ["invalid_body", "invalid_request", "payload_too_large"]
    if op.query is not None and not op.html:
        codes.append("invalid_request")
    if op.path != "/healthz":
        codes.append("unavailable")
    codes += ["method_not_allowed", "internal_error"]
    return list(dict.fromkeys(codes))


def _errors(op: Operation) -> dict[str, Any]:
    by_status: dict[int, list[str]] = {}
    for code in error_codes(op):
        by_status.setdefault(ERRORS[code].status, []).append(code)
    responses: dict[str, Any] = {}
    for status, codes in sorted(by_status.items()):
        if op.html and status not in (405, 500):  # a page says it (not a 405 or a bug)
            responses[str(status)] = _page("a page saying the error: " + ", ".join(codes))
            continue
        schema = {"allOf": [_ref(Error)], "properties": {"error": {"enum": codes}}}
        responses[str(status)] = _json(schema, "error: " + ", ".join(codes))
    return responses


def _page(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


def _parameters(op: Operation, components: dict[str, Any]) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for name in op.path_params:
        numeric = name.endswith("_id")
        schema = {"type": "integer", "minimum": 1} if numeric else {"type": "string"}
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    if op.query is not None:
        model = components[op.query.__name__]
        required = set(model.get("required", ()))
        for name, schema in model["properties"].items():
            if op.path_params and name in op.path_params:
                continue
            param: dict[str, Any] = {
                "name": name,
                "in": "query",
                "required": name in required,
                "schema": schema,
            }
            if "description" in schema:
                param["description"] = schema["description"]
            params.append(param)
    return params + list(op.doc.get("parameters", ()))


def _operation(op: Operation, components: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {"summary": op.summary, "tags": [op.api.value]}
    doc["operationId"] = f"{op.method.lower()}_{op.path.strip('/').replace('/', '_')}"
    doc["operationId"] = doc["operationId"].replace("{", "").replace("}", "") or "root"
    params = _parameters(op, components)
    if params:
        doc["parameters"] = params
    if op.body is not None:
        content: dict[str, Any] = {"application/json": {"schema": _ref(op.body)}}
        if op.api.value == "publisher":
            content["application/x-www-form-urlencoded"] = {"schema": _FORM_OF_STRINGS}
        doc["requestBody"] = {"required": False, "content": content}
    elif op.form is not None:  # a console form: its fields are the model's, as text
        form = {"application/x-www-form-urlencoded": {"schema": _ref(op.form)}}
        doc["requestBody"] = {"required": True, "content": form}
    responses: dict[str, Any] = {}
    if op.html:
        responses[str(op.status)] = _page("an HTML page")
        if op.auth is Auth.SESSION:
            responses["303"] = {"description": "not signed in: to the sign-in page"}
    elif op.redirect:
        responses["303"] = {"description": "redirect"}
    elif op.media is not None:
        responses[str(op.status)] = {
            "description": op.summary,
            "content": {
                op.media: {
                    "schema": {"type": "object"} if "json" in op.media else {"type": "string"}
                }
            },
        }
    elif op.response is not None:
        responses[str(op.status)] = _json(_ref(op.response), op.summary)
    for status, model in op.also.items():
        responses[str(status)] = _json(_ref(model), model.__name__)
    responses.update({k: v for k, v in _errors(op).items() if k not in responses})
    doc["responses"] = responses
    if op.auth in _SECURITY:
        doc["security"] = _SECURITY[op.auth]
    doc.update({k: v for k, v in op.doc.items() if k != "parameters"})
    return doc


def _models(operations: Iterable[Operation]) -> list[type[Struct]]:
    found: dict[str, type[Struct]] = {"Error": Error}
    for op in operations:
        for model in (op.body, op.query, op.form, op.response, *op.also.values()):
            if model is not None:
                found[model.__name__] = model
    return list(found.values())


def document(operations: Sequence[Operation]) -> dict[str, Any]:
    _, components = msgspec.json.schema_components(_models(operations), ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": "calltags", "version": __version__},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": _SCHEMES},
    }
