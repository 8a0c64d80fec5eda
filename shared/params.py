"""Path and query parameter types every route shares, bounded to what the database stores.

A number PostgreSQL cannot hold (ids and cursors are `bigint`) or a date Python
cannot compute with is refused at the edge with 422, naming the parameter,
instead of failing in the driver:

    async def get_thing(thing_id: DbId, cursor: Cursor = None, month: Month = None): ...

`Cursor` and `Month` stay strings in the OpenAPI contract (clients send back
the `next_cursor` string they were given); the route receives an `int` or the
month's first `date`.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BeforeValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

INT64_MAX = 2**63 - 1
# Month boundaries, and the month after, must be valid timestamps in every time zone.
FIRST_MONTH = date(1970, 1, 1)
LAST_MONTH = date(9998, 12, 1)

_DECIMAL = re.compile(r"[0-9]{1,19}")
_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})")


def _nullable_string(pattern: str) -> dict[str, Any]:
    return {"anyOf": [{"type": "string", "pattern": pattern}, {"type": "null"}]}


def parse_cursor(value: Any) -> int:
    """A cursor: the decimal id a page ended at, 0 to 2**63 - 1."""
    if isinstance(value, str) and _DECIMAL.fullmatch(value) and int(value) <= INT64_MAX:
        return int(value)
    raise PydanticCustomError(
        "cursor_invalid",
        "cursor must be the next_cursor of a previous page (a decimal integer from 0 to {max})",
        {"max": INT64_MAX},
    )


def parse_month(value: Any) -> date:
    """`YYYY-MM` between FIRST_MONTH and LAST_MONTH, as the month's first day."""
    found = _MONTH.fullmatch(value) if isinstance(value, str) else None
    if found is not None and 1 <= int(found.group(2)) <= 12:
        first = date(int(found.group(1)), int(found.group(2)), 1)
        if FIRST_MONTH <= first <= LAST_MONTH:
            return first
    raise PydanticCustomError(
        "month_invalid",
        "month must be YYYY-MM, from {first} to {last}",
        {"first": FIRST_MONTH.strftime("%Y-%m"), "last": LAST_MONTH.strftime("%Y-%m")},
    )


DbId = Annotated[int, Path(ge=1, le=INT64_MAX, description="A numeric id (1 to 2**63 - 1).")]
"""A `bigint` primary key in the path."""

Cursor = Annotated[
    int | None,
    BeforeValidator(parse_cursor),
    WithJsonSchema(_nullable_string(f"^{_DECIMAL.pattern}$")),
    Query(description="The `next_cursor` of the previous page; omit it for the first page."),
]
"""The optional `cursor` query parameter of an id-keyed page."""

Month = Annotated[
    date | None,
    BeforeValidator(parse_month),
    WithJsonSchema(_nullable_string(f"^{_MONTH.pattern}$")),
    Query(description="A month, YYYY-MM (1970-01 to 9998-12)."),
]
"""An optional `month` query parameter, as the month's first day."""
