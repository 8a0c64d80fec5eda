"""`scrm` commands of the users service: webhook secrets, a new tenant's WeCom settings,
WeCom sync, contacts import/export.

Loaded whenever `scrm` starts (see shared.cli): click only at module level, and each
command imports the service when it runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from shared.cli import TenantSetup, audit_cli, extend_tenant_create, run_with_session

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from services.users.models import WebhookSecret
    from shared.runtime import Runtime


@click.group(name="webhook-secret")
def webhook_secret() -> None:
    """Secrets that sign webhooks (two may be active while rotating).

    Running API processes see a new or revoked secret within SCRM_TENANT_CACHE_SECONDS.
    """


@webhook_secret.command(name="create")
@click.option("--tenant", "slug", required=True)
def webhook_secret_create(slug: str) -> None:
    """Create a webhook secret; prints it (shown only once) as the last line.

    Beyond two active secrets, the oldest is revoked.
    """

    async def go(session: AsyncSession, runtime: Runtime) -> tuple[str, str]:
        from services.users.service import create_webhook_secret
        from shared.tenancy import get_tenant_by_slug

        tenant = await get_tenant_by_slug(session, slug)
        secret_id, value = await create_webhook_secret(session, runtime.cipher, tenant.id)
        audit_cli(session, "scrm webhook-secret create", tenant.id, secret_id=secret_id)
        return f"created webhook secret {secret_id} for {slug}", value

    summary, value = run_with_session(go)
    click.echo(summary, err=True)
    click.echo(value)


def _secret_line(secret: WebhookSecret) -> str:
    state = "active" if secret.revoked_at is None else f"revoked {secret.revoked_at.isoformat()}"
    return f"{secret.id}\t{secret.created_at.isoformat()}\t{state}"


@webhook_secret.command(name="list")
@click.option("--tenant", "slug", required=True)
def webhook_secret_list(slug: str) -> None:
    """List the tenant's webhook secrets, newest first: id, created at, state (never the
    secret itself)."""

    async def go(session: AsyncSession, _: Runtime) -> list[str]:
        from services.users import repository
        from shared.tenancy import get_tenant_by_slug

        tenant = await get_tenant_by_slug(session, slug)
        return [_secret_line(s) for s in await repository.list_webhook_secrets(session, tenant.id)]

    for line in run_with_session(go):
        click.echo(line)


@webhook_secret.command(name="revoke")
@click.option("--tenant", "slug", required=True)
@click.argument("secret_id", type=click.UUID)
def webhook_secret_revoke(slug: str, secret_id: uuid.UUID) -> None:
    """Revoke a webhook secret: webhooks signed with it are refused."""

    async def go(session: AsyncSession, _: Runtime) -> str:
        from services.users import repository
        from shared.errors import NotFound
        from shared.tenancy import get_tenant_by_slug

        tenant = await get_tenant_by_slug(session, slug)
        revoked = await repository.revoke_webhook_secret(session, tenant.id, secret_id)
        if revoked is None:
            raise NotFound("no such webhook secret")
        audit_cli(session, "scrm webhook-secret revoke", tenant.id, secret_id=revoked.id)
        return f"revoked webhook secret {revoked.id} at {revoked.revoked_at}"

    click.echo(run_with_session(go))


# -- the WeCom settings of `scrm tenant create` ----------------------------------------

_WECOM_OPTIONS = [
    click.Option(["--wecom-corp-id"], default=None, help="WeCom corp id (企业ID)."),
    click.Option(["--wecom-token"], default=None, help="Callback Token."),
    click.Option(
        ["--wecom-aes-key"], default=None, help="Callback EncodingAESKey (43 characters)."
    ),
    click.Option(["--wecom-secret"], default=None, help="App secret used for WeCom API calls."),
]


def _wecom_setup(options: Mapping[str, Any]) -> TenantSetup | None:
    """The new tenant's WeCom settings, from `scrm tenant create --wecom-*`."""
    corp_id: str | None = options["wecom_corp_id"]
    token: str | None = options["wecom_token"]
    aes_key: str | None = options["wecom_aes_key"]
    secret: str | None = options["wecom_secret"]
    wecom = (corp_id, token, aes_key)
    if any(wecom) and not all(wecom):
        raise click.UsageError("--wecom-corp-id, --wecom-token and --wecom-aes-key go together")
    if secret and not all(wecom):
        raise click.UsageError("--wecom-secret needs the other --wecom-* options")
    if not (corp_id and token and aes_key):
        return None

    async def configure(session: AsyncSession, runtime: Runtime, tenant_id: uuid.UUID) -> None:
        from services.users.service import configure_wecom

        await configure_wecom(
            session,
            runtime.cipher,
            tenant_id,
            corp_id=corp_id,
            token=token,
            encoding_aes_key=aes_key,
            secret=secret,
        )
        audit_cli(session, "scrm wecom configure", tenant_id, corp_id=corp_id)

    return configure


@click.group()
def wecom() -> None:
    """WeCom integration."""


@wecom.command(name="sync")
@click.option("--tenant", "slug", required=True)
def wecom_sync(slug: str) -> None:
    """Reconcile staff, contacts and groups with WeCom's list APIs (repairs missed callbacks)."""

    async def go(session: AsyncSession, _: Runtime) -> dict[str, int]:
        from services.users import sync
        from shared.tenancy import get_tenant_by_slug

        tenant = await get_tenant_by_slug(session, slug)
        client = await sync.client_for(session, tenant.id)
        if client is None:
            raise click.ClickException(f"tenant {slug!r} has no WeCom app secret configured")
        async with client:
            counts = await sync.full_sync(session, tenant.id, client)
        audit_cli(session, "scrm wecom sync", tenant.id, **counts)
        return counts

    counts = run_with_session(go)
    click.echo(
        f"synced {counts['staff']} staff, {counts['contacts']} contact follow(s), "
        f"{counts['groups']} group(s)"
    )


@click.group(name="contacts")
def contacts() -> None:
    """Contacts: CSV import and export."""


@contacts.command(name="import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tenant", "slug", required=True)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the rejected rows (default: FILE.rejected.csv, if any).",
)
def import_command(file: Path, slug: str, report_path: Path | None) -> None:
    """Create or update contacts from a CSV file (UTF-8, header row).

    Columns: identity kinds (external_userid, unionid, openid, phone,
    shop_customer_id, referral_code, email: at least one), name,
    owner_staff_userid and attr.<name>. Bad rows are reported and skipped; the
    others load in one transaction. Exits 1 only when the file as a whole is
    refused.
    """
    from services.users.importer_cli import import_file

    import_file(file, slug, report_path)


@contacts.command(name="export")
@click.option("--tenant", "slug", required=True)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File to write (default: standard output).",
)
def export_command(slug: str, output: Path | None) -> None:
    """Write every contact as CSV, personal data unmasked (the read is audited)."""
    from services.users.importer_cli import export_file

    export_file(slug, output)


def register(cli: click.Group) -> None:
    cli.add_command(webhook_secret)
    cli.add_command(wecom)
    cli.add_command(contacts)
    extend_tenant_create(cli, _WECOM_OPTIONS, _wecom_setup)
