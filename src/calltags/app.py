"""The ASGI applications the Procfile serves: `create_app` (`web:`, every API) and
`create_routing_app` (`routing:`, the routing API alone)."""

from __future__ import annotations

from calltags.config import Settings, load_settings
from calltags.front import Front, Role


def create_app(settings: Settings | None = None) -> Front:
    return Front(settings if settings is not None else load_settings(), Role.WEB)


def create_routing_app(settings: Settings | None = None) -> Front:
    return Front(settings if settings is not None else load_settings(), Role.ROUTING)
