"""The governor's rules, pure: windows on the tenant's clock, quiet hours, sensitive words.

Counting what a contact already received is the planner's (one statement per batch,
runner/engine.py); what the counts allow is decided here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import ahocorasick  # type: ignore[import-not-found]

from services.campaigns.governor.settings import Cap, GovernorSettings, QuietHours

# Channels that push to the customer: quiet hours hold them back.
PUSHED = ("wecom_single", "wecom_group", "wecom_moment", "sms")
# WeCom mass messages, under the corp's quota.
MASS = ("wecom_single",)


def _clock(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def local(now: datetime, tz: ZoneInfo) -> datetime:
    return now.astimezone(tz)


def day_start(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=tz)


@dataclass(frozen=True)
class Windows:
    """The starts of the tenant-local day, week (Monday) and month holding `now`, and of
    the next ones (when a postponed send may go)."""

    day: datetime
    week: datetime
    month: datetime
    next_day: datetime
    next_week: datetime
    next_month: datetime

    @classmethod
    def at(cls, now: datetime, tz: ZoneInfo) -> Windows:
        today = local(now, tz).date()
        monday = today - timedelta(days=today.weekday())
        first = today.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        return cls(
            day=day_start(today, tz),
            week=day_start(monday, tz),
            month=day_start(first, tz),
            next_day=day_start(today + timedelta(days=1), tz),
            next_week=day_start(monday + timedelta(days=7), tz),
            next_month=day_start(following, tz),
        )


@dataclass(frozen=True)
class Counts:
    """What a contact received (or has planned) in each window, on one channel or all."""

    day: int = 0
    week: int = 0
    month: int = 0


def over(cap: Cap, counts: Counts, windows: Windows) -> datetime | None:
    """None when one more send fits the cap; else when the fullest window ends."""
    ends = []
    if cap.month is not None and counts.month >= cap.month:
        ends.append(windows.next_month)
    if cap.week is not None and counts.week >= cap.week:
        ends.append(windows.next_week)
    if cap.day is not None and counts.day >= cap.day:
        ends.append(windows.next_day)
    return max(ends) if ends else None


def mass_quota(settings: GovernorSettings) -> Cap:
    return Cap(
        day=settings.wecom_daily_quota,
        week=settings.wecom_weekly_quota,
        month=settings.wecom_monthly_quota,
    )


def quiet_until(quiet: QuietHours | None, now: datetime, tz: ZoneInfo) -> datetime | None:
    """The end of the quiet window `now` falls in (tenant time), or None outside one."""
    if quiet is None:
        return None
    at = local(now, tz)
    start, end = _clock(quiet.start), _clock(quiet.end)
    moment = at.time()
    today = at.date()
    if start < end:  # e.g. 12:00-14:00
        if start <= moment < end:
            return datetime.combine(today, end, tzinfo=tz)
        return None
    # Wraps midnight, e.g. 22:00-08:00.
    if moment >= start:
        return datetime.combine(today + timedelta(days=1), end, tzinfo=tz)
    if moment < end:
        return datetime.combine(today, end, tzinfo=tz)
    return None


@functools.lru_cache(maxsize=256)
def _automaton(words: tuple[str, ...]) -> ahocorasick.Automaton | None:
    if not words:
        return None
    automaton = ahocorasick.Automaton()
    for word in words:
        automaton.add_word(word.casefold(), word)
    automaton.make_automaton()
    return automaton


def sensitive_hits(words: list[str], text: str) -> list[str]:
    """The tenant's words found in the text (case-insensitive), each once, in order."""
    automaton = _automaton(tuple(words))
    if automaton is None:
        return []
    found: dict[str, None] = {}
    for _, word in automaton.iter(text.casefold()):
        found[word] = None
    return list(found)
