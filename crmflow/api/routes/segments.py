"""`/api/v1/segments`: segments."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/segments", tags=["segments"])
