"""Message templates: `{{variable}}`s rendered per contact at send time.

Which variables a template may use is checked when the journey is saved
(journeys/definition.py VARIABLES): an unknown one is a 422 then. At send time a
variable the contact has no value for (no points account, no coupon in the trigger)
skips the send with the reason `missing_variable`, never an empty string in a
message.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

_VARIABLE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
POINTS_VARIABLES = frozenset({"points_balance", "expiring_points", "expiring_at"})


def variables(template: str) -> set[str]:
    return set(_VARIABLE.findall(template))


def values_for(
    facts: dict[str, Any],
    balances: dict[str, object] | None,
    context: dict[str, Any],
    tz: ZoneInfo,
) -> dict[str, str | None]:
    """The variables' values for one contact."""
    values: dict[str, str | None] = {"name": facts.get("name")}
    balances = balances or {}
    balance = balances.get("points_balance")
    values["points_balance"] = None if balance is None else str(balance)
    expiring = balances.get("expiring_points")
    values["expiring_points"] = None if expiring is None else str(expiring)
    at = balances.get("expiring_at")
    values["expiring_at"] = (
        at.astimezone(tz).date().isoformat() if isinstance(at, datetime) else None
    )
    properties = context.get("properties") if isinstance(context.get("properties"), dict) else {}
    coupon = context.get("coupon") or (properties or {}).get("coupon")
    values["coupon"] = None if coupon is None else str(coupon)
    for key in ("expiring_points", "expiring_at"):
        if context.get(key) is not None:  # a points notice says it itself
            values[key] = str(context[key])
    return values


def render(template: str, values: dict[str, str | None]) -> str | None:
    """The text, or None when a variable it uses has no value."""
    missing = False

    def one(match: re.Match[str]) -> str:
        nonlocal missing
        value = values.get(match.group(1))
        if value is None or value == "":
            missing = True
            return ""
        return value

    text = _VARIABLE.sub(one, template)
    return None if missing else text
