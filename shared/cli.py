"""The `scrm` command.

Every command finds its servers the same way: DATABASE_URL / REDIS_URL when
set, otherwise the embedded PostgreSQL and Redis under SCRM_DATA_DIR, started
on demand and shared with any other `scrm` process using them.

Starting is cheap: this module imports click and the standard library only,
and each command imports what it needs (settings, SQLAlchemy, a service, the
app) when it runs, so `scrm --help` does not load the platform. The services'
command modules (`services/<name>/cli.py`) keep to the same rule; a test
holds them all to it.
"""

from __future__ import annotations

import getpass
import importlib.machinery
import importlib.util
import json
import os
import select
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar

import click

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from shared.config import Settings
    from shared.runtime import Runtime

T = TypeVar("T")

# shared.events.SERVICES, which cannot be imported here without SQLAlchemy
# (tests/shared/test_cli_startup.py keeps the two equal).
SERVICES = ("users", "tagging", "campaigns", "points")
SERVICE_CHOICE = click.Choice(SERVICES)

TenantSetup = Callable[["AsyncSession", "Runtime", uuid.UUID], Awaitable[None]]
"""What a service adds to `scrm tenant create`, run in its transaction once the tenant
exists (with the tenant's id)."""

TenantOptionsHook = Callable[[Mapping[str, Any]], TenantSetup | None]
"""Given the values of a service's `tenant create` options, before anything is written:
raises click.UsageError for values that do not go together, else returns the setup to
run (None: nothing to do)."""


def _settings() -> Settings:
    from shared.config import SettingsError, get_settings, secret_key

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
    from shared.audit import record_audit

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
    import asyncio

    from shared.db import unit_of_work
    from shared.errors import ScrmError
    from shared.runtime import Runtime

    settings = _settings()

    async def go(database_url: str, redis_url: str) -> T:
        runtime = await Runtime.open(settings, database_url, redis_url)
        try:
            if not settings.database_url:
                from shared import migrate

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


def _stdout_reader_gone() -> bool:
    """Whether standard output is a pipe (or socket) that nobody reads any more."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))
    except (OSError, ValueError):
        return False


def _end_for_closed_output(error: BrokenPipeError) -> NoReturn:
    """End as `cat` does when its reader goes away (`scrm contacts export | head`):
    silently, by SIGPIPE, which Python ignores in favour of BrokenPipeError. A broken
    pipe elsewhere (a server's socket) is an error like any other."""
    if not _stdout_reader_gone():
        raise error
    # Python flushes stdout once more at exit: let that go nowhere, not fail again.
    with suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    sys.exit(128 + signal.SIGPIPE)  # where SIGPIPE did not end the process


class _Scrm(click.Group):
    """The `scrm` group: every command's closed standard output is handled here."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)  # --help, --version
        except BrokenPipeError as error:
            _end_for_closed_output(error)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            # Output still buffered is written now, while a closed reader can be handled.
            sys.stdout.flush()
        except BrokenPipeError as error:
            _end_for_closed_output(error)
        return result


@click.group(cls=_Scrm)
@click.version_option(package_name="scrm", prog_name="scrm", message="%(prog)s %(version)s")
def cli() -> None:
    """scrm: private-domain customer operations on WeCom."""


def _use_uvloop() -> None:
    """uvloop when installed (it is, with uvicorn[standard]): what uvicorn itself would pick."""
    import asyncio

    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _run(
    api: list[str],
    workers: list[str],
    *,
    dispatch: bool,
    migrate_first: bool,
    loops: Literal["all", "normal", "priority"] = "all",
) -> None:
    import asyncio

    from shared.observability import configure_logging
    from shared.process import run_process

    settings = _settings()
    configure_logging(settings.log_level)
    if workers and not api and settings.worker_nice and loops != "priority":
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
                loops=loops,
            )
        )


async def _migrate(database_url: str) -> None:
    from shared import migrate
    from shared.db import create_engine

    engine = create_engine(database_url, pool_size=1)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()


@cli.command()
def up() -> None:
    """Migrate, then run every service's API, workers, the outbox relay and the scheduler.

    The API and the workers run as supervised child processes: one API process and,
    for each service, SCRM_WORKER_PROCESSES worker processes of its own (as deploy/
    runs them), so processing never slows the acknowledgement of callbacks, and one
    service's backlog never delays another's events. The users workers also run the
    outbox relay and the scheduler. A crashed child is restarted. Ctrl-C or SIGTERM
    stops them all, the embedded servers too.
    """
    import asyncio

    from shared.observability import configure_logging
    from shared.supervisor import supervise

    settings = _settings()
    configure_logging(settings.log_level)
    with servers(settings) as (database_url, redis_url):
        asyncio.run(_migrate(database_url))
        env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
        crashing = supervise(worker_parts(settings.worker_processes), env)
    if crashing is not None:
        raise click.ClickException(f"{crashing} kept crashing; everything was stopped")


def worker_parts(copies: int) -> dict[str, list[str]]:
    """The child processes of `scrm up` by name: the API, and `copies` worker processes
    per service (the users ones with the outbox relay and the scheduler)."""
    from shared.events import load_subscriptions
    from shared.worker import has_priority_loops

    load_subscriptions()  # the services' task modules, and so their loops
    part = [sys.executable, "-m", "shared.cli", "run-part"]
    parts = {"api": [*part, "--api"]}
    for service in SERVICES:
        for n in range(copies):
            name = f"workers-{service}" if copies == 1 else f"workers-{service}-{n + 1}"
            dispatch = ["--dispatch"] if service == "users" else []
            parts[name] = [*part, "--service", service, *dispatch]
        if has_priority_loops(service):
            # Work that must not wait behind a backlog, at normal priority.
            parts[f"priority-{service}"] = [*part, "--service", service, "--priority"]
    return parts


@cli.command(name="run-part", hidden=True)
@click.option("--api", "api", is_flag=True, help="Serve every service's API.")
@click.option(
    "--service", "services", type=SERVICE_CHOICE, multiple=True, help="Run this service's worker."
)
@click.option("--dispatch", "dispatch", is_flag=True, help="Also run the relay and scheduler.")
@click.option(
    "--priority", "priority", is_flag=True, help="Only the services' priority loops, un-niced."
)
def run_part(api: bool, services: tuple[str, ...], dispatch: bool, priority: bool) -> None:
    """One part of `scrm up` (started by it; stops when its parent dies)."""
    _run(
        list(SERVICES) if api else [],
        list(services),
        dispatch=dispatch,
        migrate_first=False,
        loops="priority" if priority else ("normal" if services else "all"),
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
    import asyncio

    settings = _settings()
    with servers(settings) as (database_url, _):
        asyncio.run(_migrate(database_url))
    click.echo("schema is up to date")


@cli.group()
def tenant() -> None:
    """Manage tenants (one per brand / WeCom corp)."""


class TenantCreateCommand(click.Command):
    """`tenant create`, which services extend with options of their own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hooks: list[TenantOptionsHook] = []


def extend_tenant_create(
    cli: click.Group, options: Sequence[click.Option], hook: TenantOptionsHook
) -> None:
    """Add a service's `options` to `scrm tenant create` (how the users service adds
    --wecom-*); `hook` gets their values (see TenantOptionsHook)."""
    group = cli.commands["tenant"]
    assert isinstance(group, click.Group)
    command = group.commands["create"]
    assert isinstance(command, TenantCreateCommand)
    command.params.extend(options)
    command.hooks.append(hook)


@tenant.command(name="create", cls=TenantCreateCommand)
@click.argument("slug")
@click.option("--name", default=None, help="Display name (defaults to the slug).")
@click.option("--timezone", default="Asia/Shanghai", show_default=True)
@click.pass_context
def tenant_create(
    ctx: click.Context, /, slug: str, name: str | None, timezone: str, **service_options: Any
) -> None:
    """Create a tenant (and its WeCom settings); prints its slug as the last line."""
    command = ctx.command
    assert isinstance(command, TenantCreateCommand)
    setups = [setup for hook in command.hooks if (setup := hook(service_options)) is not None]

    async def go(session: AsyncSession, runtime: Runtime) -> str:
        from shared import tenancy

        created = await tenancy.create_tenant(session, slug, name=name, timezone=timezone)
        audit_cli(session, "scrm tenant create", created.id, slug=slug)
        for setup in setups:
            await setup(session, runtime, created.id)
        return f"created tenant {created.slug} ({created.id}, {created.timezone})"

    click.echo(run_with_session(go))
    click.echo(slug)


@tenant.command(name="list")
def tenant_list() -> None:
    """List tenants."""

    async def go(session: AsyncSession, _: Runtime) -> list[str]:
        from shared import tenancy

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
        from shared import apikeys as auth
        from shared import tenancy

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
        from shared import apikeys as auth
        from shared import tenancy

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
        from shared import dlq, tenancy

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
        from shared import dlq
        from shared.events import load_subscriptions

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


def _command_module(service: str) -> ModuleType | None:
    """`services/<service>/cli.py`, if the service has commands, loaded without running
    the service package's `__init__` (which wires the service up for serving and may
    load the web and database layers); a command that imports the service runs it."""
    name = f"services.{service}.cli"
    if name in sys.modules:
        return sys.modules[name]
    import services

    folders = [os.path.join(folder, service) for folder in services.__path__]
    spec = importlib.machinery.PathFinder.find_spec(name, folders)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def register_service_commands(group: click.Group) -> None:
    """Each service may add its own commands in `services/<name>/cli.py` (`register(cli)`)."""
    for service in SERVICES:
        module = _command_module(service)
        if module is not None:
            module.register(group)


def main() -> None:
    register_service_commands(cli)
    try:
        cli(standalone_mode=True)
    except Exception as exc:
        # Only a command that loaded the settings can have failed on them.
        config = sys.modules.get("shared.config")
        if config is None or not isinstance(exc, config.SettingsError):
            raise
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    # `python -m shared.cli` (how `scrm up` starts its parts) runs this file as
    # __main__, a second copy of the module: run the importable one, which the
    # services' command modules extend.
    from shared.cli import main as run

    run()
