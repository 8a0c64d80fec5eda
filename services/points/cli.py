"""`scrm points ...`: commands of the points service."""

from __future__ import annotations

import click
from sqlalchemy.ext.asyncio import AsyncSession

from shared.cli import run_with_session
from shared.runtime import Runtime
from shared.tenancy import get_tenant_by_slug


@click.group()
def points() -> None:
    """Membership points."""


@points.command(name="verify")
@click.option("--tenant", "slug", required=True)
def points_verify(slug: str) -> None:
    """Check the ledger's invariants over every account; exit 1 on any violation."""
    from services.points.ledger.verify import Violation, verify_tenant

    async def go(session: AsyncSession, _: Runtime) -> tuple[int, list[Violation]]:
        tenant = await get_tenant_by_slug(session, slug)
        return await verify_tenant(session, tenant.id)

    accounts, violations = run_with_session(go)
    for violation in violations:
        click.echo(str(violation), err=True)
    if violations:
        click.echo(f"{len(violations)} violation(s) in {accounts} account(s)", err=True)
        raise SystemExit(1)
    click.echo(f"ok: {accounts} account(s), every invariant holds")


def register(cli: click.Group) -> None:
    cli.add_command(points)
