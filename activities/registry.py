"""Every activity a crmflow worker runs, bound to the worker's database and settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from activities.automation_activities import AutomationActivities
from activities.channels.base import Channel, build_channels
from activities.journey_activities import JourneyActivities
from activities.project_activities import ProjectActivities
from activities.store_activities import StoreActivities
from activities.team_chat import team_chats
from crmflow.settings import Settings


def build_activities(engine: Engine, settings: Settings) -> list[Callable[..., Any]]:
    channels: dict[str, Channel] = {**build_channels(settings, engine), **team_chats(settings)}
    return [
        *StoreActivities(engine).all(),
        *ProjectActivities(engine, settings).all(),
        *JourneyActivities(engine, settings, channels).all(),
        *AutomationActivities(engine, settings, channels).all(),
    ]
