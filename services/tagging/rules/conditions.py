"""A rule's conditions on an event's properties, and the tag name a property derives.

`where` is equality on scalar properties, with JSON's types: "1" is not 1, true is
not 1, 1 is 1.0. It is the same test as PostgreSQL's `properties @> where` on
those scalars, which the window counts and the dry-run use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.tagging.rules.schemas import MAX_TAG_NAME


def _same(value: Any, wanted: Any) -> bool:
    if isinstance(wanted, bool) or isinstance(value, bool):
        return isinstance(wanted, bool) and isinstance(value, bool) and value is wanted
    if isinstance(wanted, int | float):
        return isinstance(value, int | float) and value == wanted
    return isinstance(value, str) and isinstance(wanted, str) and value == wanted


def matches(properties: Mapping[str, Any], where: Mapping[str, Any]) -> bool:
    """Whether every condition of `where` holds for the event's properties."""
    return all(key in properties and _same(properties[key], v) for key, v in where.items())


def tag_name_of(properties: Mapping[str, Any], name: str) -> tuple[str | None, str | None]:
    """(tag name, None), or (None, why the event is skipped): the property must be
    text of 1 to 30 characters."""
    if name not in properties or properties[name] is None:
        return None, "property_missing"
    value = properties[name]
    if not isinstance(value, str):
        return None, "property_not_text"
    if not value:
        return None, "tag_name_empty"
    if len(value) > MAX_TAG_NAME:
        return None, "tag_name_too_long"
    return value, None
