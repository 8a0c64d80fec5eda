"""HTTP routes of the tagging service's segments part."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
