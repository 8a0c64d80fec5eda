"""The tenant's points rules document: what is accepted always loads back."""

from __future__ import annotations

import httpx

from shared.runtime import Runtime
from tests.points.support import make_brand


async def test_rules_that_would_not_load_back_are_refused_and_change_nothing(
    committed: Runtime, committed_client: httpx.AsyncClient
) -> None:
    brand = await make_brand(committed)
    admin = brand.headers("admin")
    before = await committed_client.get("/v1/points/config", headers=admin)
    assert before.status_code == 200
    # 2083 characters, the most a URL may have; stored normalised it gains a "/".
    url = "https://" + "0" * 2050 + "a" * 25
    assert len(url) == 2083
    put = await committed_client.put(
        "/v1/points/config", json={"alert_webhook_url": url}, headers=admin
    )
    assert put.status_code == 422, put.text
    assert put.json()["error"]["code"] == "validation_error"
    after = await committed_client.get("/v1/points/config", headers=admin)
    assert after.status_code == 200
    assert after.json() == before.json()
    earned = await committed_client.get("/v1/points/status", headers=admin)
    assert earned.status_code == 200


async def test_a_normal_alert_url_is_kept(
    committed: Runtime, committed_client: httpx.AsyncClient
) -> None:
    brand = await make_brand(committed)
    admin = brand.headers("admin")
    put = await committed_client.put(
        "/v1/points/config",
        json={"alert_webhook_url": "https://hooks.example.com/a"},
        headers=admin,
    )
    assert put.status_code == 200, put.text
    got = await committed_client.get("/v1/points/config", headers=admin)
    assert got.json()["alert_webhook_url"] == "https://hooks.example.com/a"
