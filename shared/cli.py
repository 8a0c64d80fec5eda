"""The `scrm` command.

Every command finds its servers the same way: DATABASE_URL / REDIS_URL when
set, otherwise the embedded PostgreSQL and Redis under SCRM_DATA_DIR, started
on demand and shared with any other `scrm` process using them.
"""

from __future__ import annotations

import asyncio
import getpass
import importlib
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from sqlalchemy.ext.asyncio import AsyncSession

from shared import auth, dlq, migrate, tenancy
from shared.audit import record_audit
from shared.config import Settings, SettingsError, get_settings, secret_key
from shared.db import unit_of_work
from shared.errors import ScrmError
from shared.events import SERVICES, load_subscriptions
from shared.observability import configure_logging
from shared.process import run_process
from shared.runtime import Runtime
from shared.supervisor import supervise

T = TypeVar("T")
SERVICE_CHOICE = click.Choice(SERVICES)


def _settings() -> Settings:
    try:
        settings = get_settings()
        secret_key(settings)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    return settings


@contextmanager
def servers(settings: Settings) -> Iterator[tuple[str, str]]:
    """The database and Redis URLs to use, starting the embedded servers if needed."""
    if settings.database_url and settings.redis_url:
        yield settings.database_url, settings.redis_url
        return
    from shared.embedded import EmbeddedError, EmbeddedServers

    embedded = EmbeddedServers(settings.resolved_data_dir())
    try:
        urls = embedded.acquire()
    except EmbeddedError as exc:
        raise click.ClickException(f"could not start the embedded servers: {exc}") from None
    try:
        yield settings.database_url or urls.database_url, settings.redis_url or urls.redis_url
    finally:
        embedded.release()


def audit_cli(
    session: AsyncSession, action: str, tenant_id: uuid.UUID | None, **target: object
) -> None:
    """Commands change things outside any HTTP request; they are audited all the same."""
    record_audit(
        session,
        None,
        tenant_id=tenant_id,
        api_key_id=None,
        actor=f"cli:{getpass.getuser()}",
        role=None,
        action=action,
        target={k: str(v) for k, v in target.items()},
    )


def run_with_session(fn: Callable[[AsyncSession, Runtime], Awaitable[T]]) -> T:
    """Run one unit of work against the configured servers (migrating embedded ones)."""
    settings = _settings()

    async def go(database_url: str, redis_url: str) -> T:
        runtime = await Runtime.open(settings, database_url, redis_url)
        try:
            if not settings.database_url:
                await migrate.upgrade(runtime.engine)
            async with unit_of_work(runtime.sessionmaker) as session:
                return await fn(session, runtime)
        finally:
            await runtime.close()

    with servers(settings) as (database_url, redis_url):
        try:
            return asyncio.run(go(database_url, redis_url))
        except ScrmError as exc:
            raise click.ClickException(exc.message) from None
        except OSError as exc:
            raise click.ClickException(f"cannot reach the database or Redis: {exc}") from None


@click.group()
def cli() -> None:
    """scrm: private-domain customer operations on WeCom."""


def _use_uvloop() -> None:
    """uvloop when installed (it is, with uvicorn[standard]): what uvicorn itself would pick."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _run(api: list[str], workers: list[str], *, dispatch: bool, migrate_first: bool) -> None:
    settings = _settings()
    configure_logging(settings.log_level)
    if workers and not api and settings.worker_nice:
        # Acknowledging integrations comes first (SCRM_WORKER_NICE).
        os.nice(settings.worker_nice)
    _use_uvloop()
    with servers(settings) as (database_url, redis_url):
        asyncio.run(
            run_process(
                settings,
                database_url,
                redis_url,
                api_services=api,
                worker_services=workers,
                with_dispatch=dispatch,
                migrate_first=migrate_first,
            )
        )


@cli.command()
def up() -> None:
    """Migrate, then run every service's API, workers, the outbox relay and the scheduler.

    The API and the workers (SCRM_WORKER_PROCESSES, one per core by default) run as
    supervised child processes, so processing never slows the acknowledgement of
    callbacks (and a crashed child is restarted). Ctrl-C or SIGTERM stops them
    all, the embedded servers too.
    """
    settings = _settings()
    configure_logging(settings.log_level)
    with servers(settings) as (database_url, redis_url):

        async def migrate_now() -> None:
            from shared.db import create_engine

            engine = create_engine(database_url, pool_size=1)
            try:
                await migrate.upgrade(engine)
            finally:
                await engine.dispose()

        asyncio.run(migrate_now())
        env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
        parts = {"api": [sys.executable, "-m", "shared.cli", "run-part", "--api"]}
        for n in range(settings.worker_processes):
            parts[f"workers-{n + 1}"] = [
                sys.executable,
                "-m",
                "shared.cli",
                "run-part",
                "--workers",
            ]
        supervise(parts, env)


@cli.command(name="run-part", hidden=True)
@click.option("--api", "api", is_flag=True, help="Serve every service's API.")
@click.option("--workers", "workers", is_flag=True, help="Run every worker, relay, scheduler.")
def run_part(api: bool, workers: bool) -> None:
    """One part of `scrm up` (started by it; stops when its parent dies)."""
    _run(
        list(SERVICES) if api else [],
        list(SERVICES) if workers else [],
        dispatch=workers,
        migrate_first=False,
    )


@cli.command()
@click.option("--service", "service", type=SERVICE_CHOICE, required=True)
def serve(service: str) -> None:
    """Run one service's API alone (plus the platform endpoints) on HOST:PORT."""
    _run([service], [], dispatch=False, migrate_first=False)


@cli.command()
@click.option("--service", "service", type=SERVICE_CHOICE, required=True)
@click.option(
    "--dispatch/--no-dispatch",
    default=True,
    show_default=True,
    help="Also run the outbox relay and the scheduler (safe to run in many processes).",
)
def worker(service: str, dispatch: bool) -> None:
    """Run one service's worker: its event handlers and jobs."""
    _run([], [service], dispatch=dispatch, migrate_first=False)


@cli.command(name="migrate")
def migrate_command() -> None:
    """Bring the database schema up to date."""
    settings = _settings()

    async def go(database_url: str) -> None:
        from shared.db import create_engine

        engine = create_engine(database_url, pool_size=1)
        try:
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()

    with servers(settings) as (database_url, _):
        asyncio.run(go(database_url))
    click.echo("schema is up to date")


@cli.group()
def tenant() -> None:
    """Manage tenants (one per brand / WeCom corp)."""


@tenant.command(name="create")
@click.argument("slug")
@click.option("--name", default=None, help="Display name (defaults to the slug).")
@click.option("--timezone", default="Asia/Shanghai", show_default=True)
@click.option("--wecom-corp-id", default=None, help="WeCom corp id (企业ID).")
@click.option("--wecom-token", default=None, help="Callback Token.")
@click.option("--wecom-aes-key", default=None, help="Callback EncodingAESKey (43 characters).")
@click.option("--wecom-secret", default=None, help="App secret used for WeCom API calls.")
def tenant_create(
    slug: str,
    name: str | None,
    timezone: str,
    wecom_corp_id: str | None,
    wecom_token: str | None,
    wecom_aes_key: str | None,
    wecom_secret: str | None,
) -> None:
    """Create a tenant (and its WeCom settings); prints its slug as the last line."""
    wecom = (wecom_corp_id, wecom_token, wecom_aes_key)
    if any(wecom) and not all(wecom):
        raise click.UsageError("--wecom-corp-id, --wecom-token and --wecom-aes-key go together")
    if wecom_secret and not all(wecom):
        raise click.UsageError("--wecom-secret needs the other --wecom-* options")

    async def go(session: AsyncSession, runtime: Runtime) -> str:
        created = await tenancy.create_tenant(session, slug, name=name, timezone=timezone)
        audit_cli(session, "scrm tenant create", created.id, slug=slug)
        if wecom_corp_id and wecom_token and wecom_aes_key:
            from services.users.service import configure_wecom

            await configure_wecom(
                session,
                runtime.cipher,
                created.id,
                corp_id=wecom_corp_id,
                token=wecom_token,
                encoding_aes_key=wecom_aes_key,
                secret=wecom_secret,
            )
            audit_cli(session, "scrm wecom configure", created.id, corp_id=wecom_corp_id)
        return f"created tenant {created.slug} ({created.id}, {created.timezone})"

    click.echo(run_with_session(go))
    click.echo(slug)


@tenant.command(name="list")
def tenant_list() -> None:
    """List tenants."""

    async def go(session: AsyncSession, _: Runtime) -> list[str]:
        return [
            f"{t.slug}\t{t.name}\t{t.timezone}\t{t.id}" for t in await tenancy.list_tenants(session)
        ]

    for line in run_with_session(go):
        click.echo(line)


@cli.group()
def apikey() -> None:
    """Manage API keys."""


@apikey.command(name="create")
@click.option("--tenant", "slug", default=None, help="Tenant slug (not for --role platform).")
@click.option(
    "--role",
    type=click.Choice(["admin", "operator", "analyst", "staff", "platform"]),
    required=True,
)
@click.option("--name", default="", help="What the key is for.")
@click.option("--staff-userid", default=None, help="WeCom userid of the staff member (staff keys).")
def apikey_create(slug: str | None, role: str, name: str, staff_userid: str | None) -> None:
    """Create an API key; prints the key (shown only once) as the last line."""
    if role != "platform" and not slug:
        raise click.UsageError("--tenant is required for this role")
    if role == "platform" and slug:
        raise click.UsageError("a platform key belongs to no tenant; drop --tenant")

    async def go(session: AsyncSession, _: Runtime) -> tuple[str, str]:
        tenant_id = (await tenancy.get_tenant_by_slug(session, slug)).id if slug else None
        key, plaintext = await auth.create_api_key(
            session, tenant_id=tenant_id, role=role, name=name, staff_userid=staff_userid
        )
        audit_cli(session, "scrm apikey create", tenant_id, api_key_id=key.id, role=role)
        return f"created {role} key {key.id} for {slug or 'the platform'}", plaintext

    summary, plaintext = run_with_session(go)
    click.echo(summary, err=True)
    click.echo(plaintext)


@apikey.command(name="revoke")
@click.option("--tenant", "slug", required=True)
@click.argument("key_id", type=click.UUID)
def apikey_revoke(slug: str, key_id: uuid.UUID) -> None:
    """Revoke an API key."""

    async def go(session: AsyncSession, _: Runtime) -> str:
        tenant_id = (await tenancy.get_tenant_by_slug(session, slug)).id
        key = await auth.revoke_api_key(session, tenant_id, key_id)
        audit_cli(session, "scrm apikey revoke", tenant_id, key_id=key.id)
        return f"revoked {key.id} at {key.revoked_at}"

    click.echo(run_with_session(go))


@cli.group(name="dlq")
def dlq_group() -> None:
    """Dead letters: work that kept failing."""


def _letter_line(letter: Any, about: Any) -> str:
    """A dead letter as a JSON line; `about` is what it is about (shared.dlq.Subject)."""
    what = about.describe() if about is not None else "unknown work"
    return json.dumps(
        {
            "id": letter.id,
            "status": letter.status,
            "service": letter.service,
            "handler": letter.handler,
            "what": what,
            "tenant_id": str(letter.tenant_id) if letter.tenant_id else None,
            "attempts": letter.attempts,
            "last_error": letter.last_error,
            "updated_at": letter.updated_at.isoformat(),
        },
        ensure_ascii=False,
    )


@dlq_group.command(name="list")
@click.option("--tenant", "slug", default=None, help="Only this tenant's dead letters.")
@click.option(
    "--status", type=click.Choice(["dead", "replayed", "resolved", "all"]), default="dead"
)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
def dlq_list(slug: str | None, status: str, limit: int) -> None:
    """List dead letters, newest first, one JSON object per line."""

    async def go(session: AsyncSession, _: Runtime) -> list[str]:
        scope: uuid.UUID | str = dlq.ALL_TENANTS
        if slug:
            scope = (await tenancy.get_tenant_by_slug(session, slug)).id
        letters = await dlq.list_dead_letters(
            session, scope, status=None if status == "all" else status, limit=limit
        )
        about = await dlq.subjects(session, letters)
        return [_letter_line(letter, about.get(letter.id)) for letter in letters]

    lines = run_with_session(go)
    for line in lines:
        click.echo(line)
    click.echo(f"{len(lines)} dead letter(s)", err=True)


@dlq_group.command(name="replay")
@click.argument("dead_letter_id", type=int)
def dlq_replay(dead_letter_id: int) -> None:
    """Send a dead letter's event (or job) through its handler again."""

    async def go(session: AsyncSession, runtime: Runtime) -> str:
        load_subscriptions(extra_modules=runtime.settings.extra_task_modules)
        letter = await dlq.replay_dead_letter(session, runtime, dlq.ALL_TENANTS, dead_letter_id)
        audit_cli(session, "scrm dlq replay", letter.tenant_id, dead_letter_id=letter.id)
        about = await dlq.subjects(session, [letter])
        return _letter_line(letter, about.get(letter.id))

    click.echo(run_with_session(go))


@cli.group()
def embedded() -> None:
    """The embedded PostgreSQL and Redis used when DATABASE_URL / REDIS_URL are unset."""


@embedded.command(name="status")
def embedded_status() -> None:
    """Show whether the embedded servers run, their ports and users."""
    from shared.embedded import EmbeddedServers

    settings = _settings()
    status = EmbeddedServers(settings.resolved_data_dir()).status()
    click.echo(json.dumps(status, default=str, indent=2))


def _register_service_commands() -> None:
    """Each service may add its own commands in `services/<name>/cli.py` (`register(cli)`)."""
    for service in SERVICES:
        try:
            module = importlib.import_module(f"services.{service}.cli")
        except ModuleNotFoundError as exc:
            if exc.name != f"services.{service}.cli":
                raise
            continue
        module.register(cli)


def main() -> None:
    _register_service_commands()
    try:
        cli(standalone_mode=True)
    except SettingsError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
