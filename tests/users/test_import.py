"""Contacts CSV import and export: over HTTP, through the `scrm` command, and at rest."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from services.users.importer import export_contacts, import_contacts
from shared.db import unit_of_work
from shared.runtime import Runtime
from tests.helpers import bearer, make_key, make_tenant, run_scrm


@dataclass
class Tenant:
    id: uuid.UUID
    slug: str
    keys: dict[str, str]


@pytest.fixture
async def tenant(committed: Runtime) -> Tenant:
    async with unit_of_work(committed.sessionmaker) as session:
        created = await make_tenant(session)
        keys = {role: await make_key(session, created, role) for role in ("admin", "analyst")}
        keys["operator"] = await make_key(session, created, "operator")
    return Tenant(created.id, created.slug, keys)


def csv_body(*rows: list[str]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


async def post_csv(
    client: httpx.AsyncClient, key: str, body: bytes, content_type: str = "text/csv"
) -> httpx.Response:
    return await client.post(
        "/v1/contacts/import",
        content=body,
        headers={**bearer(key), "content-type": content_type},
    )


async def find(client: httpx.AsyncClient, key: str, **filters: str) -> list[dict[str, Any]]:
    response = await client.get("/v1/contacts", params=filters, headers=bearer(key))
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def detail(client: httpx.AsyncClient, key: str, contact_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/contacts/{contact_id}", headers=bearer(key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def scalar(runtime: Runtime, sql: str, **params: Any) -> Any:
    async with runtime.engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def test_import_loads_good_rows_and_reports_bad_ones(
    committed: Runtime, committed_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    admin = tenant.keys["admin"]
    first = csv_body(
        ["phone", "unionid", "openid", "shop_customer_id", "name", "owner_staff_userid"],
        ["13800000001", "", "oOPEN-A", "", "Alice", ""],
        ["", "oUNION-B", "", "SHOP-B", "Bob", "zhangsan"],
    )
    seeded = await post_csv(committed_client, admin, first)
    assert seeded.status_code == 200, seeded.text
    assert seeded.json()["created"] == 2

    header = ["phone", "unionid", "openid", "shop_customer_id", "email", "name"]
    header += ["owner_staff_userid", "attr.city", "attr.vip"]
    body = "\ufeff".encode() + csv_body(
        header,
        ["+86 138-0000-0002", "", "", "", "", "王小明", "lisi", "杭州", "3"],  # 2 created
        ["12ab", "", "", "", "", "Bad Phone", "", "", ""],  # 3 bad phone
        ["", "", "", "", "", "Nobody", "", "x", ""],  # 4 no identity
        ["13800000002", "", "", "", "", "Again", "", "", ""],  # 5 duplicate of line 2
        ["", "oUNION-B", "oOPEN-A", "", "", "Both", "", "", ""],  # 6 two contacts
        ["", "oUNION-C", "", "", "", 'Comma, "Quoted"\nand two lines', "", "", ""],  # 7-8
        ["13800000001", "", "", "", "Alice@Example.com", "Alice Liddell", "wangwu", "Paris", ""],
        ["", "", "", "SHOP-B", "", "", "someone-else", "", "1"],  # 10 updated, owner kept
    )
    response = await post_csv(committed_client, tenant.keys["operator"], body)
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["rows"], report["created"], report["updated"], report["unchanged"]) == (
        8,
        2,
        2,
        0,
    )
    reasons = {r["line"]: r["reason"] for r in report["rejected"]}
    assert sorted(reasons) == [3, 4, 5, 6]
    assert "invalid phone number" in reasons[3]
    assert reasons[4].startswith("no identifier")
    assert reasons[5] == "duplicate of line 2 (same phone)"
    assert reasons[6] == "identifiers belong to different contacts: merge them first"

    [created] = await find(committed_client, admin, phone="13800000002")
    assert (created["name"], created["owner_staff_userid"]) == ("王小明", "lisi")
    assert (await detail(committed_client, admin, created["id"]))["attributes"] == {
        "city": "杭州",
        "vip": "3",
    }
    [quoted] = await find(committed_client, admin, unionid="oUNION-C")
    assert quoted["name"] == 'Comma, "Quoted"\nand two lines'

    [alice] = await find(committed_client, admin, phone="13800000001")
    alice_detail = await detail(committed_client, admin, alice["id"])
    assert alice_detail["name"] == "Alice Liddell"
    assert alice_detail["owner_staff_userid"] == "wangwu", "an empty owner is filled"
    assert alice_detail["attributes"] == {"city": "Paris"}
    assert sorted((i["kind"], i["value"], i["source"]) for i in alice_detail["identities"]) == [
        ("email", "alice@example.com", "import"),
        ("openid", "oOPEN-A", "import"),
        ("phone", "+8613800000001", "import"),
    ], "the new identity is attached to the matched contact"
    [bob] = await find(committed_client, admin, unionid="oUNION-B")
    bob_detail = await detail(committed_client, admin, bob["id"])
    assert (bob_detail["name"], bob_detail["owner_staff_userid"]) == ("Bob", "zhangsan")
    assert bob_detail["attributes"] == {"vip": "1"}
    assert await scalar(committed, "SELECT count(*) FROM contacts") == 4, "no bad row loaded"


async def test_unknown_columns_refuse_the_whole_file(
    committed: Runtime, committed_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    body = csv_body(
        ["phone", "name", "mobile", "attr.bad-name"],
        ["13800000001", "Alice", "x", "y"],
    )
    response = await post_csv(committed_client, tenant.keys["admin"], body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "unknown_columns"
    assert error["details"] == {"columns": ["mobile", "attr.bad-name"]}
    assert "'mobile'" in error["message"] and "'attr.bad-name'" in error["message"]
    assert await scalar(committed, "SELECT count(*) FROM contacts") == 0
    assert await scalar(committed, "SELECT count(*) FROM contact_identities") == 0
    imported = "SELECT count(*) FROM outbox_events WHERE type = 'contact.imported'"
    assert await scalar(committed, imported) == 0

    not_utf8 = await post_csv(
        committed_client, tenant.keys["admin"], "phone\n1380\xe9\n".encode("latin-1")
    )
    assert not_utf8.status_code == 422 and not_utf8.json()["error"]["code"] == "not_utf8"
    wrong_type = await post_csv(
        committed_client, tenant.keys["admin"], b"phone\n13800000001\n", "application/json"
    )
    assert wrong_type.status_code == 415
    assert wrong_type.json()["error"]["code"] == "unsupported_media_type"
    forbidden = await post_csv(committed_client, tenant.keys["analyst"], b"phone\n13800000001\n")
    assert forbidden.status_code == 403
    assert await scalar(committed, "SELECT count(*) FROM contacts") == 0


async def test_reimport_changes_nothing_and_events_are_emitted_once(
    committed: Runtime, committed_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    rows = [["phone", "unionid", "name", "attr.level"]] + [
        [f"1390000{i:04d}", f"oU{i:06d}", f"客户{i}", str(i % 3)] for i in range(30)
    ]
    rows.append(["", "oU-nameless", "", ""])
    body = csv_body(*rows)
    first = (await post_csv(committed_client, tenant.keys["admin"], body)).json()
    assert (first["created"], first["updated"], first["unchanged"]) == (31, 0, 0)
    again = (await post_csv(committed_client, tenant.keys["admin"], body)).json()
    assert (again["rows"], again["created"], again["updated"], again["unchanged"]) == (
        31,
        0,
        0,
        31,
    )
    assert again["rejected"] == []
    assert await scalar(committed, "SELECT count(*) FROM contacts") == 31
    assert await scalar(committed, "SELECT count(*) FROM contact_identities") == 61
    events = await scalar(
        committed,
        "SELECT count(DISTINCT payload->>'contact_id') || '/' || count(*) "
        "FROM outbox_events WHERE type = 'contact.imported' AND tenant_id = :t",
        t=tenant.id,
    )
    assert events == "31/31", "one contact.imported per created contact, none on the re-run"
    ids = await scalar(
        committed,
        "SELECT count(*) FROM outbox_events o JOIN contacts c "
        "ON c.id = (o.payload->>'contact_id')::uuid WHERE o.type = 'contact.imported'",
    )
    assert ids == 31

    changed = csv_body(["unionid", "attr.level"], ["oU000007", "9"], ["oU000008", "2"])
    report = (await post_csv(committed_client, tenant.keys["admin"], changed)).json()
    assert (report["created"], report["updated"], report["unchanged"]) == (0, 1, 1)


async def test_concurrent_imports_of_one_file_create_each_contact_once(
    committed: Runtime, committed_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    body = csv_body(["phone", "name"], *([f"1350000{i:04d}", f"同时{i}"] for i in range(200)))
    responses = await asyncio.gather(
        *(post_csv(committed_client, tenant.keys["admin"], body) for _ in range(3))
    )
    reports = sorted((r.json()["created"], r.json()["unchanged"]) for r in responses)
    assert reports == [(0, 200), (0, 200), (200, 0)]
    assert await scalar(committed, "SELECT count(*) FROM contacts") == 200


@pytest.mark.parametrize("chunk_rows", [1, 2, 100])
async def test_chunks_share_duplicate_detection_and_fold_updates(
    committed: Runtime, tenant: Tenant, chunk_rows: int
) -> None:
    lines = [
        "phone,unionid,name,attr.a,attr.b\n",
        "13700000001,,One,,\n",
        "13700000002,oU-two,Two,,\n",
        "13700000003,,Three,,\n",
        "13700000001,,Again,,\n",  # line 5: duplicate of line 2, maybe in a later chunk
    ]
    async with unit_of_work(committed.sessionmaker) as session:
        report = await import_contacts(
            session, committed.cipher, tenant.id, lines, chunk_rows=chunk_rows
        )
    assert (report.created, report.rejected) == (3, [(5, "duplicate of line 2 (same phone)")])
    # Two rows reaching one contact through different identifiers both apply.
    async with unit_of_work(committed.sessionmaker) as session:
        report = await import_contacts(
            session,
            committed.cipher,
            tenant.id,
            [
                "phone,unionid,name,attr.a,attr.b\n",
                "13700000002,,Two Updated,1,\n",
                "13700000003,,,x,\n",
                ",oU-two,,,2\n",
                ",oU-two-b,,,\n",
            ],
            chunk_rows=chunk_rows,
        )
    assert (report.rows, report.created, report.updated, report.unchanged) == (4, 1, 3, 0)
    assert report.rejected == []
    found = await scalar(
        committed,
        "SELECT c.attributes FROM contacts c JOIN contact_identities i ON i.contact_id = c.id "
        "WHERE i.kind = 'unionid' AND i.tenant_id = :t AND c.name_enc IS NOT NULL",
        t=tenant.id,
    )
    assert found == {"a": "1", "b": "2"}
    assert (
        await scalar(committed, "SELECT count(*) FROM contacts WHERE tenant_id = :t", t=tenant.id)
        == 4
    )


async def test_no_personal_data_in_a_plain_dump(
    committed: Runtime, committed_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    body = csv_body(
        ["phone", "email", "unionid", "name"],
        ["13912345678", "secret.person@example.com", "oUNIONSECRET99", "诸葛孔明"],
        ["13987654321", "", "", "Zhuge Kongming"],
    )
    assert (await post_csv(committed_client, tenant.keys["admin"], body)).status_code == 200
    rows: list[str] = []
    async with committed.engine.connect() as conn:
        for table in ("contacts", "contact_identities", "outbox_events", "audit_log"):
            rows += [row[0] for row in await conn.execute(text(f"SELECT t::text FROM {table} t"))]
    dump = "\n".join(rows)
    assert dump.count("\n") >= 8
    for secret in (
        "13912345678",
        "13987654321",
        "secret.person",
        "oUNIONSECRET99",
        "诸葛",
        "孔明",
        "Zhuge",
        "Kongming",
    ):
        assert secret not in dump
    [found] = await find(committed_client, tenant.keys["admin"], q="孔明")
    assert found["name"] == "诸葛孔明", "names stay searchable through their grams"


async def test_export_is_masked_for_analysts_and_audited_when_unmasked(
    committed: Runtime, committed_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    body = csv_body(
        ["phone", "unionid", "email", "name", "owner_staff_userid", "attr.city"],
        ["13812341234", "oUNION1234567890", "ann@example.com", "张三丰", "lisi", "上海"],
        ["13800000009", "oUNION-SECOND-01", "", "", "", ""],
    )
    assert (await post_csv(committed_client, tenant.keys["admin"], body)).status_code == 200
    # A second phone on the first contact is exported with the first one.
    extra = csv_body(["unionid", "phone"], ["oUNION1234567890", "13812340000"])
    assert (await post_csv(committed_client, tenant.keys["admin"], extra)).status_code == 200

    texts: dict[str, str] = {}
    for role in ("admin", "analyst"):
        response = await committed_client.get(
            "/v1/contacts/export", headers=bearer(tenant.keys[role])
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/csv")
        texts[role] = response.text
    exports = {role: list(csv.DictReader(io.StringIO(body))) for role, body in texts.items()}
    assert next(csv.reader(io.StringIO(texts["analyst"]))) == [
        "id",
        "name",
        "external_userid",
        "unionid",
        "openid",
        "phone",
        "shop_customer_id",
        "referral_code",
        "email",
        "owner_staff_userid",
        "lifecycle_stage",
        "created_at",
        "attr.city",
    ]
    admin = {r["unionid"]: r for r in exports["admin"]}
    assert len(admin) == 2
    first = admin["oUNION1234567890"]
    assert (first["name"], first["phone"], first["email"]) == (
        "张三丰",
        "+8613812341234;+8613812340000",
        "ann@example.com",
    )
    assert (first["owner_staff_userid"], first["lifecycle_stage"], first["attr.city"]) == (
        "lisi",
        "potential",
        "上海",
    )
    analyst = {r["id"]: r for r in exports["analyst"]}
    masked = analyst[first["id"]]
    assert (masked["name"], masked["phone"], masked["unionid"], masked["email"]) == (
        "张**",
        "+86138****1234;+86138****0000",
        "oUNI****7890",
        "a***@example.com",
    )
    assert "13812341234" not in texts["analyst"] and "张三丰" not in texts["analyst"]
    audited = await scalar(
        committed,
        "SELECT string_agg(role || ':' || (target->>'id') || ':' || (target->>'fields'), ',') "
        "FROM audit_log WHERE action = 'read_personal_data contacts_export'",
    )
    assert audited == (
        "admin:all:email,external_userid,name,openid,phone,referral_code,shop_customer_id,unionid"
    )


async def test_export_masks_personal_data_unless_unmasked(
    committed: Runtime, tenant: Tenant
) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        await import_contacts(
            session,
            committed.cipher,
            tenant.id,
            ["phone,email,name,attr.tier\n", "13812341234,bo@example.com,Bo Li,gold\n"],
        )
    exported = {}
    for unmask in (True, False):
        async with unit_of_work(committed.sessionmaker) as session:
            lines = [
                line
                async for line in export_contacts(
                    session, committed.cipher, tenant.id, unmask=unmask
                )
            ]
        [row] = list(csv.DictReader(io.StringIO("".join(lines))))
        exported[unmask] = (row["name"], row["phone"], row["email"], row["attr.tier"])
    assert exported[True] == ("Bo Li", "+8613812341234", "bo@example.com", "gold")
    assert exported[False] == ("B****", "+86138****1234", "b***@example.com", "gold")


async def test_payload_over_50_mb_is_refused(
    committed: Runtime, committed_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    body = b"phone\n" + b"13800000001\n" * (50 * 1024 * 1024 // 12 + 1)
    response = await post_csv(committed_client, tenant.keys["admin"], body)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert await scalar(committed, "SELECT count(*) FROM contacts") == 0


async def test_cli_import_report_rerun_and_export(
    committed: Runtime,
    committed_client: httpx.AsyncClient,
    tenant: Tenant,
    scrm_env: dict[str, str],
    tmp_path: Path,
) -> None:
    source = tmp_path / "contacts.csv"
    source.write_bytes(
        csv_body(
            ["phone", "name", "attr.source"],
            ["13600000001", "Li Lei", "fair"],
            ["not-a-phone", "Han Meimei", "fair"],
            ["13600000002", "韩梅梅", ""],
        )
    )
    result = await run_scrm(scrm_env, "contacts", "import", str(source), "--tenant", tenant.slug)
    assert result.returncode == 0, result.stderr
    assert "3 row(s): 2 created, 0 updated, 0 unchanged, 1 rejected" in result.stdout
    rejected = list(csv.reader((tmp_path / "contacts.csv.rejected.csv").open(newline="")))
    assert rejected[0] == ["line", "reason", "phone", "name", "attr.source"]
    assert rejected[1][0] == "3" and "invalid phone number" in rejected[1][1]
    assert rejected[1][2:] == ["not-a-phone", "Han Meimei", "fair"]
    [lilei] = await find(committed_client, tenant.keys["admin"], phone="13600000001")
    assert lilei["name"] == "Li Lei"

    again = await run_scrm(
        scrm_env,
        "contacts",
        "import",
        str(source),
        "--tenant",
        tenant.slug,
        "--report",
        str(tmp_path / "again.csv"),
    )
    assert again.returncode == 0, again.stderr
    assert "3 row(s): 0 created, 0 updated, 2 unchanged, 1 rejected" in again.stdout
    assert (tmp_path / "again.csv").exists()

    refused_file = tmp_path / "refused.csv"
    refused_file.write_text("phone,mobile\n13600000003,x\n")
    refused = await run_scrm(
        scrm_env, "contacts", "import", str(refused_file), "--tenant", tenant.slug
    )
    assert refused.returncode == 1
    assert "unknown column(s): 'mobile'" in refused.stderr
    assert not (tmp_path / "refused.csv.rejected.csv").exists()
    assert await scalar(committed, "SELECT count(*) FROM contacts") == 2

    output = tmp_path / "export.csv"
    exported = await run_scrm(
        scrm_env, "contacts", "export", "--tenant", tenant.slug, "--output", str(output)
    )
    assert exported.returncode == 0, exported.stderr
    assert "exported 2 contact(s)" in exported.stderr
    rows = {r["phone"]: r for r in csv.DictReader(output.open(newline="", encoding="utf-8"))}
    assert rows["+8613600000002"]["name"] == "韩梅梅", "the command exports unmasked"
    assert rows["+8613600000001"]["attr.source"] == "fair"
    assert output.stat().st_mode & 0o077 == 0, "unmasked export readable by its owner only"
    audit = await scalar(
        committed,
        "SELECT string_agg(actor || '|' || action, ',' ORDER BY id) FROM audit_log "
        "WHERE tenant_id = :t AND actor LIKE 'cli:%'",
        t=tenant.id,
    )
    assert audit.count("|scrm contacts import") == 2, "a refused import leaves no audit entry"
    assert audit.endswith("|read_personal_data contacts_export")
