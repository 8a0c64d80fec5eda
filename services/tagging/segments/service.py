"""Business rules of segments: saving a rule (checked, with what it reads), building
its membership (in the request for small tenants, else in the tagging worker,
retried with backoff when it fails), static lists, previews and explanations.
"""

from __future__ import annotations

import csv
import io
import logging
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.facts import Changes, segment_fact
from services.tagging.segments import compiler, evaluate, repository, rules
from services.tagging.segments.models import Segment
from services.tagging.segments.settings import segment_settings
from shared.errors import Conflict, InvalidInput, NotFound
from shared.scheduler import backoff_seconds, schedule

log = logging.getLogger("scrm.tagging.segments")

BUILD_JOB = "segments.build"
SAMPLE_SIZE = 20
MAX_LISTED = 10_000


# -- rules ---------------------------------------------------------------------------------


async def check_rule(
    session: AsyncSession, tenant_id: uuid.UUID, raw: Any, segment_id: int | None = None
) -> rules.Node:
    """The rule's tree once its tags and segments are the tenant's and nesting makes no
    cycle; RuleError (422, naming the path) otherwise."""
    node = rules.parse(raw)
    tags = rules.tag_ids(node)
    found = await repository.existing_tags(session, tenant_id, [t for _, t in tags])
    for path, tag_id in tags:
        if tag_id not in found:
            raise rules.RuleError(f"{path}.tag" if path else "tag", f"no tag {tag_id}")
    nested = rules.segment_ids(node)
    if nested:
        graph = await repository.segment_reads(session, tenant_id)
        for path, nested_id in nested:
            where = f"{path}.segment" if path else "segment"
            if nested_id not in graph:
                raise rules.RuleError(where, f"no segment {nested_id}")
            if segment_id is not None and _reaches(graph, nested_id, segment_id):
                raise rules.RuleError(
                    where, f"segment {nested_id} reads segment {segment_id}: a cycle"
                )
    return node


def _reaches(graph: dict[int, list[str]], start: int, goal: int) -> bool:
    seen: set[int] = set()
    stack = [start]
    while stack:
        current = stack.pop()
        if current == goal:
            return True
        if current in seen:
            continue
        seen.add(current)
        for fact in graph.get(current, ()):
            kind, _, key = fact.partition(":")
            if kind == "segment":
                stack.append(int(key))
    return False


async def moment_for(session: AsyncSession, tenant_id: uuid.UUID, now: datetime) -> compiler.Moment:
    return compiler.moment_at(now, await repository.tenant_timezone(session, tenant_id))


# -- segments ------------------------------------------------------------------------------


async def create_segment(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    name: str,
    rule: dict[str, Any] | None,
    contact_ids: list[uuid.UUID] | None,
    now: datetime,
) -> Segment:
    """A dynamic segment (a rule, built at once for a small tenant, else queued) or a
    static one (a list of live contacts)."""
    if await repository.name_taken(session, tenant_id, name):
        raise Conflict(f"a segment is already named {name!r}", code="name_taken")
    if rule is not None:
        node = await check_rule(session, tenant_id, rule)
        segment = Segment(
            tenant_id=tenant_id,
            name=name,
            kind="dynamic",
            rule=rule,
            reads=rules.reads(node),
            timed=rules.is_timed(node),
            status="building",
            created_at=now,
            updated_at=now,
        )
        session.add(segment)
        await session.flush()
        await request_build(session, segment, now)
        return segment
    listed = await _live_listed(session, tenant_id, contact_ids or [])
    segment = Segment(
        tenant_id=tenant_id,
        name=name,
        kind="static",
        rule=None,
        reads=[],
        status="ready",
        last_built_at=now,
        created_at=now,
        updated_at=now,
    )
    session.add(segment)
    await session.flush()
    await repository.add_listed(session, tenant_id, segment.id, listed, now)
    return segment


async def _live_listed(
    session: AsyncSession, tenant_id: uuid.UUID, contact_ids: list[uuid.UUID]
) -> list[uuid.UUID]:
    if len(contact_ids) > MAX_LISTED:
        raise InvalidInput(
            f"at most {MAX_LISTED} contacts at a time", details={"path": "contact_ids"}
        )
    live = await repository.live_profiles(session, tenant_id, contact_ids)
    for index, contact_id in enumerate(contact_ids):
        if contact_id not in live:
            raise InvalidInput(
                f"contact {contact_id} is not a live contact of the tenant",
                code="unknown_contact",
                details={"path": f"contact_ids[{index}]"},
            )
    return list(dict.fromkeys(contact_ids))


async def get_segment(session: AsyncSession, tenant_id: uuid.UUID, segment_id: int) -> Segment:
    segment = await repository.get_segment(session, tenant_id, segment_id)
    if segment is None:
        raise NotFound("no such segment")
    return segment


async def segment_view(
    session: AsyncSession, tenant_id: uuid.UUID, segment_id: int, staff: str | None
) -> dict[str, Any]:
    segment = await get_segment(session, tenant_id, segment_id)
    view = summary(segment)
    view["member_count"] = await repository.member_count(session, segment_id, staff)
    return view


def summary(segment: Segment) -> dict[str, Any]:
    return {
        "id": segment.id,
        "name": segment.name,
        "kind": segment.kind,
        "rule": segment.rule,
        "status": segment.status,
        "error": segment.error,
        "build_attempts": segment.build_attempts,
        "last_built_at": segment.last_built_at,
        "version": segment.version,
        "created_at": segment.created_at,
        "updated_at": segment.updated_at,
    }


async def list_segments(
    session: AsyncSession, tenant_id: uuid.UUID, after: int | None, limit: int
) -> list[dict[str, Any]]:
    return [summary(s) for s in await repository.list_segments(session, tenant_id, after, limit)]


async def update_segment(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    segment_id: int,
    changes: dict[str, Any],
    now: datetime,
) -> Segment:
    """Rename, or give a dynamic segment a new rule (a new version, rebuilt)."""
    segment = await repository.get_segment(session, tenant_id, segment_id, lock=True)
    if segment is None:
        raise NotFound("no such segment")
    name = changes.get("name")
    if name is not None and name != segment.name:
        if await repository.name_taken(session, tenant_id, name, other_than=segment_id):
            raise Conflict(f"a segment is already named {name!r}", code="name_taken")
        segment.name = name
    if "rule" in changes:
        if segment.kind != "dynamic":
            raise InvalidInput("a static segment has no rule", details={"path": "rule"})
        node = await check_rule(session, tenant_id, changes["rule"], segment_id)
        segment.rule = changes["rule"]
        segment.reads = rules.reads(node)
        segment.timed = rules.is_timed(node)
        segment.version += 1
        segment.updated_at = now
        await session.flush()
        await request_build(session, segment, now)
        return segment
    segment.updated_at = now
    await session.flush()
    return segment


async def delete_segment(session: AsyncSession, tenant_id: uuid.UUID, segment_id: int) -> None:
    """Delete a segment and its members (no events: the segment itself is gone); a
    segment other rules read is refused with 409 `segment_in_use`."""
    segment = await repository.get_segment(session, tenant_id, segment_id, lock=True)
    if segment is None:
        raise NotFound("no such segment")
    readers = [s for s in await repository.nesting_segments(session, tenant_id, segment_id)]
    if readers:
        raise Conflict(
            "other segments' rules read this one",
            code="segment_in_use",
            details={"segment_ids": readers},
        )
    await session.delete(segment)
    await session.flush()


# -- builds --------------------------------------------------------------------------------


async def request_build(session: AsyncSession, segment: Segment, now: datetime) -> None:
    """Build now when the tenant is small (in a savepoint: a failure is queued for the
    worker instead), else queue the build for the tagging worker."""
    segment.status = "building"
    segment.build_attempts = 0
    segment.error = None
    await session.flush()
    settings = segment_settings()
    size = await repository.count_live_profiles(
        session, segment.tenant_id, settings.inline_build_contacts
    )
    if size <= settings.inline_build_contacts:
        try:
            async with session.begin_nested():
                await build(session, segment.id, now)
            await session.refresh(segment)
            return
        except Exception:
            log.exception("segment %s: building in the request failed; queued", segment.id)
    await _schedule_build(session, segment.tenant_id, segment.id, now)


async def _schedule_build(
    session: AsyncSession, tenant_id: uuid.UUID, segment_id: int, due_at: datetime
) -> None:
    await schedule(
        session,
        service="tagging",
        job=BUILD_JOB,
        args={"segment_id": segment_id},
        due_at=due_at,
        tenant_id=tenant_id,
    )


async def build(session: AsyncSession, segment_id: int, now: datetime) -> dict[str, int]:
    """The full build: one statement applying only the difference between the members
    and the rule's answer over every live profile (entered/left published for it).
    Segments that read this one are rebuilt after it."""
    settings = segment_settings()
    await repository.set_timeouts(
        session, settings.build_lock_timeout_ms, settings.build_statement_timeout_ms
    )
    await repository.tune_for_every_contact(session, settings.evaluation_work_mem)
    segment = await repository.lock_for_build(session, segment_id)
    if segment is None or segment.kind != "dynamic" or segment.rule is None:
        return {}
    node = rules.parse(segment.rule)
    moment = await moment_for(session, segment.tenant_id, now)
    totals = await repository.apply_difference(
        session, segment.tenant_id, segment.id, node, moment, report_contacts=False
    )
    assert isinstance(totals, dict)
    await repository.mark_built(session, segment.id, now)
    for reader in await repository.nesting_segments(session, segment.tenant_id, segment.id):
        nesting = await repository.get_segment(session, segment.tenant_id, reader)
        if nesting is not None:
            await request_build(session, nesting, now)
    return totals


async def run_build(session: AsyncSession, segment_id: int, now: datetime) -> bool:
    """The worker's build: on failure the segment is `failed` with the error and its
    attempts, and the build is retried with backoff (up to build_max_attempts)."""
    try:
        async with session.begin_nested():
            await build(session, segment_id, now)
        return True
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.warning("segment %s: build failed: %s", segment_id, error)
        attempts = await repository.mark_failed(session, segment_id, error, now)
        settings = segment_settings()
        segment = await session.get(Segment, segment_id)
        if segment is not None and attempts < settings.build_max_attempts:
            delay = backoff_seconds(settings.build_retry_base_seconds, attempts)
            await _schedule_build(
                session, segment.tenant_id, segment_id, now + timedelta(seconds=delay)
            )
        return False


async def rebuild(
    session: AsyncSession, tenant_id: uuid.UUID, segment_id: int, now: datetime
) -> Segment:
    segment = await repository.get_segment(session, tenant_id, segment_id, lock=True)
    if segment is None:
        raise NotFound("no such segment")
    if segment.kind != "dynamic":
        raise InvalidInput("a static segment is not built from a rule", code="static_segment")
    await request_build(session, segment, now)
    return segment


# -- reads ---------------------------------------------------------------------------------


async def preview(
    session: AsyncSession, tenant_id: uuid.UUID, raw: Any, staff: str | None, now: datetime
) -> dict[str, Any]:
    node = await check_rule(session, tenant_id, raw)
    moment = await moment_for(session, tenant_id, now)
    await repository.tune_for_every_contact(session, segment_settings().evaluation_work_mem)
    count, sample = await repository.preview(session, tenant_id, node, moment, staff, SAMPLE_SIZE)
    return {"count": count, "sample": sample}


async def explain(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    segment_id: int,
    contact_id: uuid.UUID,
    now: datetime,
) -> dict[str, Any]:
    """Whether the contact is in the segment and, for a rule, why: every condition with
    whether it holds and what it saw."""
    segment = await get_segment(session, tenant_id, segment_id)
    listed = await repository.is_member(session, segment_id, contact_id)
    if segment.rule is None:
        return {"member": listed, "listed": listed, "rule": None, "leaves": []}
    node = rules.parse(segment.rule)
    moment = await moment_for(session, tenant_id, now)
    loaded = await repository.contact_facts(session, tenant_id, contact_id, node, moment)
    facts = evaluate.ContactFacts(live=False)
    if loaded is not None:
        facts = evaluate.ContactFacts(
            live=loaded["fields"]["status"] == "live",
            **{k: loaded[k] for k in ("fields", "tags", "counts", "groups", "segments")},
        )
    member, answers = evaluate.explain(node, facts, moment)
    return {
        "member": member,
        "listed": listed,
        "rule": segment.rule,
        "leaves": [
            {
                "path": a.path,
                "leaf": a.leaf,
                "holds": a.holds,
                "negated": a.negated,
                "value": a.value,
                "text": a.text,
            }
            for a in answers
        ],
    }


async def member_page(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    segment_id: int,
    after: int | None,
    limit: int,
    staff: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    await get_segment(session, tenant_id, segment_id)
    rows = await repository.member_page(session, segment_id, after, limit, staff)
    items = [{"contact_id": c, "entered_at": at} for _, c, at in rows]
    return items, (str(rows[-1][0]) if len(rows) == limit else None)


async def members_csv(
    session: AsyncSession, segment_id: int, staff: str | None
) -> AsyncIterator[str]:
    yield "contact_id,entered_at\r\n"
    async for contact_id, entered_at in repository.stream_members(session, segment_id, staff):
        yield f"{contact_id},{entered_at.isoformat()}\r\n"


# -- static lists --------------------------------------------------------------------------


async def _static(session: AsyncSession, tenant_id: uuid.UUID, segment_id: int) -> Segment:
    segment = await get_segment(session, tenant_id, segment_id)
    if segment.kind != "static":
        raise InvalidInput(
            "members of a dynamic segment follow its rule; list them on a static one",
            code="dynamic_segment",
        )
    return segment


async def add_members(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    segment_id: int,
    contact_ids: list[uuid.UUID],
    now: datetime,
) -> dict[str, int]:
    await _static(session, tenant_id, segment_id)
    listed = await _live_listed(session, tenant_id, contact_ids)
    added = await repository.add_listed(session, tenant_id, segment_id, listed, now)
    await _nested_follow(session, tenant_id, segment_id, added, now)
    return {"added": len(added), "already_members": len(listed) - len(added)}


async def remove_members(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    segment_id: int,
    contact_ids: list[uuid.UUID],
    now: datetime,
) -> dict[str, int]:
    await _static(session, tenant_id, segment_id)
    if len(contact_ids) > MAX_LISTED:
        raise InvalidInput(
            f"at most {MAX_LISTED} contacts at a time", details={"path": "contact_ids"}
        )
    removed = await repository.remove_listed(session, tenant_id, segment_id, contact_ids, now)
    await _nested_follow(session, tenant_id, segment_id, removed, now)
    return {"removed": len(removed), "not_members": len(set(contact_ids)) - len(removed)}


async def _nested_follow(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    segment_id: int,
    changed: Iterable[uuid.UUID],
    now: datetime,
) -> None:
    """Segments that read this static one follow its change."""
    from services.tagging.segments import live

    changes = Changes()
    changes.add_many(tenant_id, changed, segment_fact(segment_id))
    if changes:
        await live.reevaluate(session, changes, now)


@dataclass
class ImportReport:
    rows: int = 0
    added: int = 0
    already_members: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)


async def import_members(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    segment_id: int,
    body: bytes,
    now: datetime,
) -> ImportReport:
    """Add the contacts of a CSV file (a `contact_id` column) to a static segment; rows
    that are not a live contact of the tenant are reported with their line."""
    await _static(session, tenant_id, segment_id)
    try:
        content = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("the CSV file is not UTF-8", code="invalid_csv") from None
    try:
        return await _import_rows(session, tenant_id, segment_id, content, now)
    except csv.Error as exc:
        raise InvalidInput(f"the CSV file cannot be read: {exc}", code="invalid_csv") from None


async def _import_rows(
    session: AsyncSession, tenant_id: uuid.UUID, segment_id: int, content: str, now: datetime
) -> ImportReport:
    reader = csv.reader(io.StringIO(content, newline=""))
    header = next(reader, None)
    names = [h.strip().lower() for h in header or []]
    if "contact_id" not in names:
        raise InvalidInput(
            "the CSV file needs a contact_id column",
            code="invalid_csv",
            details={"columns": names},
        )
    column = names.index("contact_id")
    report = ImportReport()
    wanted: dict[uuid.UUID, int] = {}
    for values in reader:
        if not any(v.strip() for v in values):
            continue
        report.rows += 1
        line = reader.line_num
        raw = values[column].strip() if column < len(values) else ""
        try:
            contact_id = uuid.UUID(raw)
        except ValueError:
            report.rejected.append((line, "contact_id is not a UUID"))
            continue
        wanted.setdefault(contact_id, line)
    live = await repository.live_profiles(session, tenant_id, list(wanted))
    for contact_id, line in wanted.items():
        if contact_id not in live:
            report.rejected.append((line, "not a live contact of the tenant"))
    report.rejected.sort()
    ids = [c for c in wanted if c in live]
    for start in range(0, len(ids), MAX_LISTED):
        chunk = ids[start : start + MAX_LISTED]
        added = await repository.add_listed(session, tenant_id, segment_id, chunk, now)
        await _nested_follow(session, tenant_id, segment_id, added, now)
        report.added += len(added)
        report.already_members += len(chunk) - len(added)
    return report
