"""`scrm points ...`: commands of the points service.

Loaded whenever `scrm` starts (see shared.cli): click only at module level, and each
command imports the service when it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from shared.cli import run_with_session

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from services.points.ledger.verify import Violation
    from shared.runtime import Runtime


@click.group()
def points() -> None:
    """Membership points."""


@points.command(name="verify")
@click.option("--tenant", "slug", required=True)
def points_verify(slug: str) -> None:
    """Check the ledger's invariants over every account; exit 1 on any violation."""

    async def go(session: AsyncSession, _: Runtime) -> tuple[int, list[Violation]]:
        from services.points.ledger.verify import verify_tenant
        from shared.tenancy import get_tenant_by_slug

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
