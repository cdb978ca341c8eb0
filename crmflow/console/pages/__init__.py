"""The console's pages, one module per area (overview, customers, journeys, projects, tags,
automations, rules). Each module holds a `router` (paths relative to /console); `routers()`
finds them, so adding a page is adding a module."""

from __future__ import annotations

import importlib
import pkgutil

from fastapi import APIRouter


def routers() -> list[APIRouter]:
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        router = getattr(module, "router", None)
        if isinstance(router, APIRouter):
            found.append(router)
    return found
