"""`/api/v1/rules`: rules."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/rules", tags=["rules"])
