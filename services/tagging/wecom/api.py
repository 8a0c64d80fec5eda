"""HTTP routes of the tagging service's wecom part."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
