"""HTTP routes of the tagging service's rules part."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
