"""The console's forms: a url-encoded body read as text fields, and those fields read
as a request model, the admin API's own (`KeyCreate`, `KeyUpdate`, ...) through
`models.convert`, so that a form is checked exactly as a JSON body is and refused with
the same message. What a form shows of a model (its defaults and bounds) is read from
the model too, never written again."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from msgspec import Struct, inspect

from calltags.errors import ApiError
from calltags.http import query_pairs
from calltags.models import convert

MAX_FIELDS = 200  # fields of one form; more is refused before any reading

T = TypeVar("T", bound=Struct)


def fields(body: bytes) -> dict[str, str]:
    """The fields of a url-encoded form body (of a repeated field the last wins)."""
    try:
        return dict(query_pairs(body.decode("utf-8"), MAX_FIELDS))
    except UnicodeDecodeError as exc:
        raise ApiError("invalid_body", "the form is not valid UTF-8") from exc
    except ValueError as exc:
        raise ApiError("invalid_body", f"a form of more than {MAX_FIELDS} fields") from exc


def read(values: dict[str, str], model: type[T]) -> T:
    """The form's fields as `model`: a blank field is left out (the model's default
    applies), the text of a list field is split at whitespace and commas, numbers and
    checkboxes (value "true") are read from their text. ApiError 422 `invalid_request`
    naming the field, as for a JSON body."""
    lists = _list_fields(model)
    given: dict[str, Any] = {}
    for name, value in values.items():
        text = value.strip()
        if text:
            given[name] = text.replace(",", " ").split() if name in lists else text
    return convert(given, model)


@dataclass(frozen=True)
class Spec:
    """What a form shows of one field of a model."""

    default: Any  # None: the field has no default, or its default is null
    required: bool
    minimum: int | float | None
    maximum: int | float | None
    max_length: int | None


@functools.cache
def specs(model: type[Struct]) -> dict[str, Spec]:
    """Each field's default and bounds, by name, as the model declares them."""
    found: dict[str, Spec] = {}
    for field in _info(model).fields:
        kind = _unwrapped(field.type)
        default = None if field.default is msgspec.NODEFAULT else field.default
        if field.default_factory is not msgspec.NODEFAULT:
            default = field.default_factory()
        found[field.name] = Spec(
            default=default,
            required=field.required,
            minimum=_first(kind, "ge", "gt"),
            maximum=_first(kind, "le", "lt"),
            max_length=getattr(kind, "max_length", None),
        )
    return found


def _info(model: type[Struct]) -> inspect.StructType:
    info = inspect.type_info(model)
    assert isinstance(info, inspect.StructType)
    return info


def _unwrapped(kind: inspect.Type) -> inspect.Type:
    """The type of a field under its metadata, and but for None in a union."""
    while True:
        if isinstance(kind, inspect.Metadata):
            kind = kind.type
        elif isinstance(kind, inspect.UnionType):
            others = [t for t in kind.types if not isinstance(t, inspect.NoneType)]
            if len(others) != 1:
                return kind
            kind = others[0]
        else:
            return kind


def _first(kind: inspect.Type, *names: str) -> Any:
    for name in names:
        value = getattr(kind, name, None)
        if value is not None:
            return value
    return None


def _list_fields(model: type[Struct]) -> frozenset[str]:
    return frozenset(
        field.name
        for field in _info(model).fields
        if isinstance(_unwrapped(field.type), inspect.ListType)
    )
