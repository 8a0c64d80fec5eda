"""The whole OpenAPI document, fuzzed by schemathesis over real HTTP with every tenant role.

A real API process (`scrm run-part --api`) serves this run's database; a tenant
is seeded with contacts (one owned by the staff key's user, one by someone
else, one without an owner), points and a catalog item, and their ids are
offered to schemathesis as likely values of the path parameters, so that most
operations reach their business rules and not only their 404s. Schemathesis
then runs with the admin, operator, analyst and staff keys, and fails on any
5xx or any response that the document does not describe (status code, content
type or body schema).

The run is bounded: SCRM_SCHEMATHESIS_EXAMPLES cases per operation and role
(10 by default) and a deadline per role.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.users.models import Contact
from shared.db import unit_of_work
from shared.runtime import Runtime
from tests.helpers import make_key, make_tenant

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("schemathesis")]

ROLES = ("admin", "operator", "analyst", "staff")
EXAMPLES = int(os.environ.get("SCRM_SCHEMATHESIS_EXAMPLES", "10"))
ROLE_DEADLINE_SECONDS = 300
# The coverage phase (boundary and negative values of every parameter and field) runs
# with the keys that may write; the read-only roles meet most writes with 403 before
# any validation, so examples and fuzzing are enough to hold them to the document.
PHASES = {
    "admin": "examples,coverage,fuzzing",
    "operator": "examples,coverage,fuzzing",
    "analyst": "examples,fuzzing",
    "staff": "examples,fuzzing",
}
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    )
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _schemathesis() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert found, "schemathesis is installed with the test extra"
    return found


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """Where the server's log and each role's schemathesis output are kept."""
    path = Path(os.environ.get("SCRM_SCHEMATHESIS_OUT", str(tmp_path)))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def api_server(committed: Runtime, scrm_env: dict[str, str], out_dir: Path) -> Iterator[str]:
    """A real API process on this run's database; its base URL."""
    port = _free_port()
    env = {**scrm_env, "HOST": "127.0.0.1", "PORT": str(port), "SCRM_LOG_LEVEL": "WARNING"}
    log = (out_dir / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "run-part", "--api"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the API process exited; see {log.name}"
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the API process did not start"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def _seed(runtime: Runtime, base: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """A tenant with keys of every role and a few things for the path parameters to name."""
    contacts = [uuid.uuid4() for _ in range(3)]
    async with unit_of_work(runtime.sessionmaker) as session:
        tenant = await make_tenant(session)
        keys = {role: await make_key(session, tenant, role) for role in ROLES}
        for contact_id, owner in zip(contacts, ("staff-1", "someone-else", None), strict=True):
            session.add(Contact(id=contact_id, tenant_id=tenant.id, owner_staff_userid=owner))
    values: dict[str, list[str]] = {"contact_id": [str(c) for c in contacts]}
    operator = {"Authorization": f"Bearer {keys['operator']}"}
    async with httpx.AsyncClient(base_url=base, headers=operator, timeout=30) as http:
        for contact_id in contacts:
            earned = await http.post(
                f"/v1/points/accounts/{contact_id}/adjustments",
                json={"points": 500, "reason": "seed"},
            )
            assert earned.status_code == 201, earned.text
        item = await http.post(
            "/v1/points/items",
            json={
                "sku": "tea-sampler",
                "kind": "coupon",
                "name": "Tea sampler",
                "coupon_value_fen": 500,
                "stock": 10,
            },
        )
        if item.status_code == 201:
            values["item_id"] = [item.json()["id"]]
        redemption = await http.post(
            f"/v1/points/accounts/{contacts[0]}/redemptions",
            json={"item_id": values["item_id"][0]} if "item_id" in values else {},
        )
        if redemption.status_code == 201 and "id" in redemption.json():
            values["redemption_id"] = [redemption.json()["id"]]
    values["tenant_slug"] = [tenant.slug]
    return keys, values


def _config(path: Path, values: dict[str, list[str]]) -> None:
    """A schemathesis.toml offering the seeded ids for the path parameters of those names."""
    lines = []
    for name, entries in values.items():
        lines.append(f"[dictionaries.{name}]")
        lines.append(f"values = {json.dumps(entries)}")
    lines.append("[parameters]")
    for name in values:
        lines.append(f'"path.{name}" = {{ dictionary = "{name}", probability = 0.7 }}')
    path.write_text("\n".join(lines) + "\n")


async def test_the_api_holds_to_its_document_for_every_role(
    committed: Runtime, api_server: str, out_dir: Path, tmp_path: Path
) -> None:
    keys, values = await _seed(committed, api_server)
    config = tmp_path / "schemathesis.toml"
    _config(config, values)
    failures: dict[str, str] = {}
    for role in ROLES:
        command = [
            _schemathesis(),
            "--config-file",
            str(config),
            "run",
            f"{api_server}/openapi.json",
            "--header",
            f"Authorization: Bearer {keys[role]}",
            "--checks",
            CHECKS,
            "--phases",
            PHASES[role],
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            "20261201",
            # One worker: Hypothesis reads strategy sources with `ast`, which is not
            # safe across threads on Python 3.11 ("AST constructor recursion depth").
            "--workers",
            "1",
            "--request-timeout",
            "20",
            "--suppress-health-check",
            "all",
            "--no-color",
        ]
        run = await asyncio.to_thread(
            subprocess.run,
            command,
            capture_output=True,
            text=True,
            timeout=ROLE_DEADLINE_SECONDS,
            cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"},
        )
        report = out_dir / f"schemathesis-{role}.txt"
        report.write_text(run.stdout + run.stderr)
        summary = run.stdout[run.stdout.rfind("SUMMARY") :]
        print(f"--- schemathesis as {role} (full output: {report}) ---\n{summary}")
        if run.returncode != 0:
            failures[role] = run.stdout[-30000:] + run.stderr[-2000:]
    assert not failures, "\n\n".join(f"=== {role} ===\n{out}" for role, out in failures.items())
