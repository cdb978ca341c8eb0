"""Every activity a crmflow worker runs, bound to the worker's database and settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from activities.store_activities import StoreActivities
from crmflow.settings import Settings


def build_activities(engine: Engine, settings: Settings) -> list[Callable[..., Any]]:
    return [*StoreActivities(engine).all()]
