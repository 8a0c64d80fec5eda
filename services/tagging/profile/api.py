"""HTTP routes of the tagging service's profile part."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
