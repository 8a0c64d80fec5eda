"""Starting `scrm` is cheap: its modules and the services' command modules load click only."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version

from shared import cli
from shared.events import SERVICES
from tests.helpers import run_scrm

# What a command may import when it runs, never when `scrm` starts.
HEAVY_PACKAGES = (
    "sqlalchemy",
    "asyncpg",
    "alembic",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "pydantic_settings",
    "arq",
    "redis",
    "cryptography",
    "prometheus_client",
    "httpx",
    "psutil",
)

_STARTUP = """
import json, sys
import shared.cli as cli
cli.register_service_commands(cli.cli)
commands = {
    name: sorted(getattr(command, "commands", {}))
    for name, command in cli.cli.commands.items()
}
options = [o for p in cli.cli.commands["tenant"].commands["create"].params for o in p.opts]
help_text = cli.cli.get_help(cli.click.Context(cli.cli, info_name="scrm"))
print(json.dumps({
    "modules": sorted(sys.modules),
    "commands": commands,
    "tenant_create_options": options,
    "help": help_text,
}))
"""


def test_starting_scrm_loads_no_platform_or_service_module() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _STARTUP], capture_output=True, text=True, check=True, timeout=60
    )
    started = json.loads(result.stdout)
    loaded = set(started["modules"])
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY_PACKAGES)
    assert heavy == [], "imported by `import shared.cli` and the services' register()"
    services = sorted(m for m in loaded if m.startswith("services."))
    assert services == ["services.points.cli", "services.users.cli"]
    assert not any(m.startswith("shared.") and m != "shared.cli" for m in loaded)
    # ... and yet every command is there.
    commands = started["commands"]
    assert commands["webhook-secret"] == ["create", "list", "revoke"]
    assert commands["contacts"] == ["export", "import"]
    assert commands["points"] == ["verify"]
    assert {"up", "serve", "worker", "migrate", "tenant", "apikey", "dlq"} <= set(commands)
    assert "--wecom-corp-id" in started["tenant_create_options"]
    assert "webhook-secret" in started["help"] and "--version" in started["help"]


def test_service_names_are_the_platforms() -> None:
    assert cli.SERVICES == SERVICES


async def test_version_comes_from_the_package_metadata(scrm_env: dict[str, str]) -> None:
    result = await run_scrm(scrm_env, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"scrm {version('scrm')}\n"


# What the database commands load (`tenant list`, `apikey create`, `dlq list`,
# `webhook-secret`, `contacts export`, `points verify`): the storage, never the
# web framework, which costs more to import than the command takes to run.
_COMMAND_MODULES = """
import json, sys
import services.points.ledger.verify
import services.users
import services.users.importer
import services.users.repository
import services.users.service
import shared.apikeys
import shared.audit
import shared.db
import shared.dlq
import shared.errors
import shared.migrate
import shared.privacy
import shared.runtime
import shared.tenancy
print(json.dumps(sorted(sys.modules)))
"""


def test_database_commands_do_not_load_the_web_framework() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _COMMAND_MODULES],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    loaded = json.loads(result.stdout)
    web = sorted(m for m in loaded if m.split(".")[0] in ("fastapi", "starlette", "uvicorn"))
    assert web == []
