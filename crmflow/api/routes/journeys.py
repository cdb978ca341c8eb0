"""`/api/v1/journeys`: journeys."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/journeys", tags=["journeys"])
