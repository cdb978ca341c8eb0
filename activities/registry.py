"""Every activity a crmflow worker runs, bound to the worker's database and settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from activities.automation_activities import AutomationActivities
from activities.channels.base import build_channels
from activities.journey_activities import JourneyActivities
from activities.project_activities import ProjectActivities
from activities.store_activities import StoreActivities
from crmflow.settings import Settings


def build_activities(engine: Engine, settings: Settings) -> list[Callable[..., Any]]:
    channels = build_channels(settings, engine)
    return [
        *StoreActivities(engine).all(),
        *ProjectActivities(engine, settings).all(),
        *JourneyActivities(engine, settings, channels).all(),
        *AutomationActivities(engine, settings, channels).all(),
    ]
