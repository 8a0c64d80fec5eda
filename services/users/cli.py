"""`scrm` commands of the users service: webhook secrets, WeCom sync, contacts import/export."""

from __future__ import annotations

import click
from sqlalchemy.ext.asyncio import AsyncSession

from shared.cli import audit_cli, run_with_session
from shared.runtime import Runtime
from shared.tenancy import get_tenant_by_slug


@click.group(name="webhook-secret")
def webhook_secret() -> None:
    """Secrets that sign webhooks (two may be active while rotating)."""


@webhook_secret.command(name="create")
@click.option("--tenant", "slug", required=True)
def webhook_secret_create(slug: str) -> None:
    """Create a webhook secret; prints it (shown only once) as the last line."""
    from services.users.service import create_webhook_secret

    async def go(session: AsyncSession, runtime: Runtime) -> tuple[str, str]:
        tenant = await get_tenant_by_slug(session, slug)
        secret_id, value = await create_webhook_secret(session, runtime.cipher, tenant.id)
        audit_cli(session, "scrm webhook-secret create", tenant.id, secret_id=secret_id)
        return f"created webhook secret {secret_id} for {slug}", value

    summary, value = run_with_session(go)
    click.echo(summary, err=True)
    click.echo(value)


@click.group()
def wecom() -> None:
    """WeCom integration."""


@wecom.command(name="sync")
@click.option("--tenant", "slug", required=True)
def wecom_sync(slug: str) -> None:
    """Reconcile staff, contacts and groups with WeCom's list APIs (repairs missed callbacks)."""
    from services.users import sync

    async def go(session: AsyncSession, _: Runtime) -> dict[str, int]:
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


def register(cli: click.Group) -> None:
    cli.add_command(webhook_secret)
    cli.add_command(wecom)
    from services.users.importer_cli import contacts

    cli.add_command(contacts)
