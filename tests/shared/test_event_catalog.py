"""The event catalog (shared/catalog.py): every type published, subscribed or sent by
integrations is declared, its example is real, and README shows the generated tables."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.users.event_types import INBOUND_EVENT_TYPES
from services.users.wecom_events import CHAT_CHANGES, CONTACT_CHANGES, TAG_CHANGES
from shared.catalog import EventCatalog, EventType, catalog, markdown
from shared.events import load_subscriptions
from shared.runtime import Runtime
from tests.conftest import ROOT
from tests.helpers import bearer, make_key, make_tenant
from tests.points.support import make_brand
from tests.shared.bus_support import work_until_idle

# publish() calls whose type is not a literal: the users service publishes each applied
# business event under its own (inbound) type, which the catalog declares both ways.
EVENT_TYPE = re.compile(r"[a-z_]+(?:\.[a-z_]+)+")
MIRRORED = {("services/users/processing.py", "event['type']")}


def _constants(tree: ast.Module) -> dict[str, str]:
    return {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        if isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def _name_of(node: ast.expr, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    return None


def _sql_text(node: ast.AST) -> str | None:
    """A string literal's text; an f-string's with its fields as `{name}`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            part.value if isinstance(part, ast.Constant) else "{" + ast.unparse(part.value) + "}"  # type: ignore[attr-defined]
            for part in node.values
        )
    return None


def published_types() -> tuple[dict[str, list[str]], set[tuple[str, str]]]:
    """Types named where events are published in services/ and shared/: publish() and
    publish_many() calls, and SQL inserting into outbox_events. Also the calls whose
    type is an expression, as (file, expression)."""
    found: dict[str, list[str]] = {}
    dynamic: set[tuple[str, str]] = set()
    for path in sorted([*ROOT.glob("services/**/*.py"), *ROOT.glob("shared/**/*.py")]):
        relative = str(path.relative_to(ROOT))
        source = path.read_text()
        tree = ast.parse(source)
        constants = _constants(tree)

        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if called == "publish" and len(node.args) >= 2:
                    event_type = _name_of(node.args[1], constants)
                    if event_type is None:
                        dynamic.add((relative, ast.unparse(node.args[1])))
                    else:
                        found.setdefault(event_type, []).append(relative)
                elif called == "publish_many" and relative != "shared/events.py":
                    tuples = [n for n in ast.walk(node) if isinstance(n, ast.Tuple) and n.elts]
                    named = [_name_of(t.elts[0], constants) for t in tuples]
                    if not named or None in named:
                        dynamic.add((relative, ast.unparse(node)))
                    for event_type in filter(None, named):
                        found.setdefault(event_type, []).append(relative)
            literal = _sql_text(node)
            if literal is not None:
                if "INTO outbox_events" not in literal:
                    continue
                # Event types are dotted words; other quoted values (a source...) are not.
                quoted = re.findall(r"'([a-z_]+(?:\.[a-z_]+)+)'", literal)
                for name in re.findall(r"'\{([A-Za-z_]+)\}'", literal):
                    if name not in constants:
                        dynamic.add((relative, name))
                    elif EVENT_TYPE.fullmatch(constants[name]):
                        quoted.append(constants[name])
                for event_type in quoted:
                    found.setdefault(event_type, []).append(relative)
    return found, dynamic


def test_the_scan_finds_what_the_services_publish() -> None:
    found, dynamic = published_types()
    # One of each way of publishing, so the scan itself cannot silently find nothing.
    assert "services/users/processing.py" in found["contact.added"]  # publish(...)
    assert "services/users/importer.py" in found["contact.imported"]  # SQL, via a constant
    assert any("points" in f for f in found["points.expiring"])  # SQL literal
    assert "shared/tenancy.py" in found["tenant.created"]
    assert dynamic == MIRRORED


def test_every_published_type_is_in_the_catalog() -> None:
    found, _ = published_types()
    declared = catalog()
    missing = {t: files for t, files in found.items() if declared.get("domain", t) is None}
    assert missing == {}, "published without a catalog entry"


def test_every_mirrored_business_type_is_declared_both_ways() -> None:
    declared = catalog()
    for inbound in declared.inbound("events"):
        assert declared.get("domain", inbound.name) is not None, inbound.name


def test_every_subscribed_type_is_in_the_catalog() -> None:
    registry = load_subscriptions()
    ours = [
        sub for sub in registry.all() if sub.handler.__module__.startswith(("services.", "shared."))
    ]
    assert any(sub.name == "points.earn_order" for sub in ours)
    for sub in ours:
        for event_type in sub.event_types:
            assert catalog().get("domain", event_type) is not None, (sub.name, event_type)


def test_inbound_types_are_those_ingest_and_the_users_worker_know() -> None:
    declared = catalog()
    assert {t.name for t in declared.inbound("events")} == {*INBOUND_EVENT_TYPES, "custom.*"}
    for event_type, model in INBOUND_EVENT_TYPES.items():
        entry = declared.get("inbound", event_type)
        assert entry is not None and entry.model is model, event_type
    wecom = {t.name for t in declared.inbound("wecom")}
    assert wecom == {
        *(f"change_external_contact.{c}" for c in CONTACT_CHANGES),
        *(f"change_external_chat.{c}" for c in CHAT_CHANGES),
        *(f"change_external_tag.{c}" for c in TAG_CHANGES),
    }


def test_an_example_the_model_refuses_is_refused() -> None:
    class Paid(BaseModel):
        amount_fen: int

    wrong = EventType("x.paid", "domain", "points", "test", Paid, {"amount_fen": "lots"})
    with pytest.raises(ValueError, match="amount_fen"):
        EventCatalog([wrong])
    twice = EventType("x.paid", "domain", "points", "test", Paid, {"amount_fen": 1})
    with pytest.raises(ValueError, match="declared twice"):
        EventCatalog([twice, twice])


async def test_each_inbound_example_is_accepted_by_the_event_api(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    key = await make_key(session, await make_tenant(session), "operator")
    events = [
        {
            "event_id": f"catalog-{uuid.uuid4().hex[:8]}",
            "type": "custom.catalog_check" if t.name == "custom.*" else t.name,
            "occurred_at": "2026-11-20T10:31:00+08:00",
            "contact": {"phone": "+8613800138000"},
            "properties": dict(t.example),
        }
        for t in catalog().inbound("events")
    ]
    response = await client.post("/v1/events", json=events, headers=bearer(key))
    assert response.status_code == 202, response.text
    assert response.json()["rejected"] == []
    assert response.json()["accepted"] == len(events)


async def test_published_payloads_fit_their_catalog_models(
    committed: Runtime, committed_client: httpx.AsyncClient
) -> None:
    """What the users worker really publishes for the integrations' events validates
    against the catalog's domain models."""
    brand = await make_brand(committed)
    events: list[dict[str, Any]] = [
        {
            "event_id": f"e-{t.name}",
            "type": "custom.catalog_check" if t.name == "custom.*" else t.name,
            "occurred_at": "2026-11-20T10:31:00+08:00",
            "contact": {"phone": "+8613800138001"},
            "properties": dict(t.example),
        }
        for t in catalog().inbound("events")
    ]
    response = await committed_client.post(
        "/v1/events", json=events, headers=brand.headers("operator")
    )
    assert response.status_code == 202, response.text
    await work_until_idle(committed, "users")
    async with committed.engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT type, payload FROM outbox_events WHERE tenant_id = :t"),
                {"t": brand.tenant_id},
            )
        ).all()
    types = {row.type for row in rows}
    assert {"tenant.created", "order.paid", "consent.changed", "custom.catalog_check"} <= types
    for row in rows:
        entry = catalog().get("domain", row.type)
        assert entry is not None, row.type
        entry.model.model_validate(row.payload)


def test_readme_shows_the_generated_catalog() -> None:
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- event-catalog:start -->\n", "<!-- event-catalog:end -->"
    assert readme.split(start, 1)[1].split(end, 1)[0] == markdown(), (
        "README's event catalog differs: paste `python -m shared.catalog --markdown`"
    )


def test_the_catalog_command_prints_the_tables_and_the_json() -> None:
    env = {"PYTHONPATH": str(ROOT), "PATH": str(Path(sys.executable).parent)}
    printed = subprocess.run(
        [sys.executable, "-m", "shared.catalog", "--markdown"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    assert printed.stdout == markdown()
    as_json = subprocess.run(
        [sys.executable, "-m", "shared.catalog"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    import json

    entries = json.loads(as_json.stdout)
    assert {(e["direction"], e["type"]) for e in entries} == {t.key for t in catalog()}
    paid = next(e for e in entries if e["type"] == "order.paid" and e["direction"] == "inbound")
    assert paid["schema"]["properties"]["amount_fen"]["type"] == "integer"


async def test_an_unknown_contact_key_is_refused_naming_the_allowed_ones(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    key = await make_key(session, await make_tenant(session), "operator")
    good = {
        "event_id": "e-good",
        "type": "checkin",
        "occurred_at": "2026-11-20T10:31:00+08:00",
        "contact": {"phone": "+8613800138000"},
    }
    wrong = {**good, "event_id": "e-wrong", "contact": {"mobile": "+8613800138000"}}
    response = await client.post("/v1/events", json=[good, wrong], headers=bearer(key))
    assert response.status_code == 202, response.text
    [rejected] = response.json()["rejected"]
    assert rejected["index"] == 1 and rejected["event_id"] == "e-wrong"
    message = " ".join(e["message"] for e in rejected["errors"])
    assert "'mobile'" in message
    for allowed in ("external_userid", "unionid", "openid", "phone", "shop_customer_id"):
        assert allowed in message
    assert "+8613800138000" not in str(rejected), "no identifier value in the answer"
