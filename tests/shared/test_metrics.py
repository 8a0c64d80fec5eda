"""/metrics: routes labelled by their full template, and event counters that move
wherever the relay and the workers run."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import unit_of_work
from shared.events import publish
from shared.runtime import Runtime
from shared.scheduler import schedule
from tests.conftest import ROOT
from tests.helpers import bearer, make_key, make_tenant
from tests.points.support import make_brand, make_member
from tests.shared.bus_support import relay_all, work_until_idle

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def requests_of(samples: Samples, method: str, route: str) -> float:
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "scrm_http_requests_total"
        and ("method", method) in labels
        and ("route", route) in labels
    )


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_requests_are_labelled_by_the_full_route_template(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    key = await make_key(session, await make_tenant(session), "operator")
    calls = [
        ("GET", "/v1/points/items", "/v1/points/items"),  # a points part's sub-router
        ("GET", f"/v1/points/accounts/{uuid.uuid4()}", "/v1/points/accounts/{contact_id}"),
        ("POST", "/v1/contacts/import", "/v1/contacts/import"),  # users' import sub-router
        ("GET", "/v1/me", "/v1/me"),
        ("GET", "/docs", "/docs"),
        ("GET", "/openapi.json", "/openapi.json"),
        ("GET", "/v1/no-such-route", "unmatched"),
    ]
    before = await scrape(client)
    for method, path, _ in calls:
        await client.request(method, path, headers=bearer(key))
    after = await scrape(client)
    for method, path, template in calls:
        grown = requests_of(after, method, template) - requests_of(before, method, template)
        assert grown == 1, (method, path, template)
    routes = {dict(labels).get("route") for (_, labels) in after}
    assert "/points/items" not in routes and "/contacts/import" not in routes


async def test_webhook_front_door_is_labelled_by_its_template(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    await client.post("/v1/webhooks/no-such-tenant/events", content=b"{}")
    after = await scrape(client)
    template = "/v1/webhooks/{tenant_slug}/events"
    assert requests_of(after, "POST", template) - requests_of(before, "POST", template) == 1


async def test_audit_log_names_actions_by_the_full_template(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    admin = await make_key(session, await make_tenant(session), "admin")
    config = await client.get("/v1/points/config", headers=bearer(admin))
    assert config.status_code == 200, config.text
    changed = await client.put("/v1/points/config", json=config.json(), headers=bearer(admin))
    assert changed.status_code == 200, changed.text
    log = await client.get("/v1/admin/audit-log", headers=bearer(admin))
    assert [entry["action"] for entry in log.json()["items"]] == ["PUT /v1/points/config"]


async def test_event_counters_move_when_events_go_through(committed: Runtime) -> None:
    """Published and handled events of this process count (flushed at the scrape)."""
    brand = await make_brand(committed)
    member = await make_member(committed, brand)
    await relay_all(committed)  # tenant.created
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=_app(committed)), base_url="http://test"
    ) as client:
        before = await scrape(client)
        await _publish_order(committed, brand.tenant_id, member)
        assert await relay_all(committed) == 1
        await work_until_idle(committed, "points")
        after = await scrape(client)
    published = "scrm_events_published_total"
    handled = "scrm_events_handled_total"
    assert sample(after, published) - sample(before, published) == 1
    # Four points handlers take order.paid: the earning, the held-points spend, the
    # referrals' qualification and the referral report's first payments.
    ok = sample(after, handled, service="points", outcome="ok")
    assert ok - sample(before, handled, service="points", outcome="ok") == 4


@pytest.mark.slow
async def test_api_metrics_count_what_a_worker_process_publishes_and_handles(
    committed: Runtime, scrm_env: dict[str, str]
) -> None:
    """The relay and the points handlers run in a `scrm worker` process; the API
    process's /metrics shows what they did."""
    brand = await make_brand(committed)
    member = await make_member(committed, brand)
    await relay_all(committed)  # tenant.created
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=_app(committed)), base_url="http://test"
    ) as client:
        before = await scrape(client)
        await _publish_order(committed, brand.tenant_id, member)
        worker = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "worker", "--service", "points"], env=scrm_env
        )
        try:
            for _ in range(600):
                account = await client.get(
                    f"/v1/points/accounts/{member}", headers=brand.headers("operator")
                )
                if account.status_code == 200 and account.json()["balance"] > 0:
                    break
                await asyncio.sleep(0.1)
            assert account.json()["balance"] == 88, "the order earned its points"
            for _ in range(600):
                after = await scrape(client)
                ok = sample(after, "scrm_events_handled_total", service="points", outcome="ok")
                if ok - sample(before, "scrm_events_handled_total", service="points", outcome="ok"):
                    break
                await asyncio.sleep(0.1)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
    published = "scrm_events_published_total"
    assert sample(after, published) - sample(before, published) >= 1
    assert ok - sample(before, "scrm_events_handled_total", service="points", outcome="ok") >= 1


async def test_every_metric_readme_lists_is_exposed(client: httpx.AsyncClient) -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("| metric | type | what |", 1)[1].split("\n\n", 1)[0]
    listed = [line.split("`")[1] for line in table.splitlines() if line.startswith("| `scrm_")]
    assert len(listed) >= 10
    await client.get("/healthz")
    exposed = {name for name, _ in await scrape(client)}
    for name in listed:
        assert any(e == name or e.startswith(name + "_") for e in exposed), name


async def test_bus_gauges_move_with_the_work_they_measure(committed: Runtime) -> None:
    """Outbox, queue, inbound and schedule gauges, read at scrape time, follow the work."""
    brand = await make_brand(committed)
    member = await make_member(committed, brand)
    await relay_all(committed)  # tenant.created
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=_app(committed)), base_url="http://test"
    ) as client:
        idle = await scrape(client)
        assert sample(idle, "scrm_outbox_pending") == 0
        assert sample(idle, "scrm_queue_depth", service="points") == 0
        await _publish_order(committed, brand.tenant_id, member)
        async with unit_of_work(committed.sessionmaker) as session:
            await schedule(
                session,
                service="points",
                job="expire_points",
                due_at=datetime(2020, 1, 1, tzinfo=UTC),
                tenant_id=brand.tenant_id,
            )
        stored = await client.post(
            "/v1/events",
            json={
                "event_id": "gauge-1",
                "type": "checkin",
                "occurred_at": "2026-11-20T10:31:00+08:00",
                "contact": {"phone": "+8613800138000"},
            },
            headers=brand.headers("operator"),
        )
        assert stored.status_code == 202, stored.text
        waiting = await scrape(client)
        assert sample(waiting, "scrm_outbox_pending") == 1
        assert sample(waiting, "scrm_outbox_lag_seconds") > 0
        assert sample(waiting, "scrm_scheduled_jobs_overdue") == 1
        assert sample(waiting, "scrm_inbound_pending") == 1
        assert sample(waiting, "scrm_inbound_lag_seconds") > 0
        assert await relay_all(committed) == 1
        queued = await scrape(client)
        assert sample(queued, "scrm_outbox_pending") == 0
        assert sample(queued, "scrm_outbox_lag_seconds") == 0
        assert sample(queued, "scrm_queue_depth", service="points") == 1
        await work_until_idle(committed, "points", "users")
        done = await scrape(client)
        assert sample(done, "scrm_queue_depth", service="points") == 0
        assert sample(done, "scrm_inbound_pending") == 0
        assert sample(done, "scrm_inbound_lag_seconds") == 0


def _app(runtime: Runtime) -> object:
    from shared.app import create_app
    from shared.events import SERVICES

    return create_app(SERVICES, runtime)


async def _publish_order(runtime: Runtime, tenant_id: uuid.UUID, contact_id: uuid.UUID) -> None:
    """order.paid as the users service publishes it once it has applied the webhook."""
    async with unit_of_work(runtime.sessionmaker) as session:
        await publish(
            session,
            "order.paid",
            {
                "contact_id": str(contact_id),
                "event_id": f"evt-{uuid.uuid4().hex[:8]}",
                "occurred_at": datetime.now(UTC).isoformat(),
                "properties": {"order_id": f"o-{uuid.uuid4().hex[:8]}", "amount_fen": 8800},
                "source": "event",
            },
            tenant_id=tenant_id,
        )
