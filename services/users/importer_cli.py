"""`scrm contacts import|export`: contacts CSV files from and to the command line."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import IO

import click
from sqlalchemy.ext.asyncio import AsyncSession

from services.users.importer import EXPORT_FIELDS, ImportReport, export_contacts, import_contacts
from shared.cli import audit_cli, run_with_session
from shared.runtime import Runtime
from shared.tenancy import get_tenant_by_slug


@click.group(name="contacts")
def contacts() -> None:
    """Contacts: CSV import and export."""


def _count_records(path: Path) -> int:
    """Data rows in the file (for the progress bar); decoding problems are the import's."""
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
        try:
            return max(sum(1 for cells in csv.reader(handle) if any(cells)) - 1, 0)
        except csv.Error:
            return 0


def _write_rejections(report: ImportReport, path: Path) -> None:
    """The rejected rows as they were, with their line and reason: fix them, import again.
    Lines end as the imported file's did."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator=report.line_ending)
        writer.writerow(["line", "reason", *report.header])
        for line, reason in report.rejected:
            writer.writerow([line, reason, *report.rejected_cells.get(line, [])])


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

    Columns: identity kinds (phone, unionid, ...), name, owner_staff_userid and
    attr.<name>. Bad rows are reported and skipped; the others load in one
    transaction. Exits 1 only when the file as a whole is refused.
    """
    total = _count_records(file)
    with click.progressbar(length=total, label="importing", file=sys.stderr) as bar:

        async def go(session: AsyncSession, runtime: Runtime) -> ImportReport:
            tenant = await get_tenant_by_slug(session, slug)
            with file.open(encoding="utf-8-sig", newline="") as handle:
                report = await import_contacts(
                    session, runtime.cipher, tenant.id, handle, progress=bar.update
                )
            audit_cli(
                session,
                "scrm contacts import",
                tenant.id,
                file=file.name,
                rows=report.rows,
                created=report.created,
                updated=report.updated,
                unchanged=report.unchanged,
                rejected=len(report.rejected),
            )
            return report

        report = run_with_session(go)
    click.echo(
        f"{report.rows} row(s): {report.created} created, {report.updated} updated, "
        f"{report.unchanged} unchanged, {len(report.rejected)} rejected"
    )
    if report.rejected or report_path is not None:
        target = report_path or file.with_name(file.name + ".rejected.csv")
        _write_rejections(report, target)
        click.echo(f"rejected rows and reasons: {target}")


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
    partial = output.with_name(output.name + ".partial") if output is not None else None
    if partial is not None:
        # Unmasked personal data: readable by the owner only.
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        handle: IO[str] = open(descriptor, "w", encoding="utf-8", newline="")  # noqa: SIM115
    else:
        handle = sys.stdout

    async def go(session: AsyncSession, runtime: Runtime) -> int:
        tenant = await get_tenant_by_slug(session, slug)
        audit_cli(
            session,
            "read_personal_data contacts_export",
            tenant.id,
            id="all",
            fields=",".join(sorted(EXPORT_FIELDS)),
            command="scrm contacts export",
        )
        count = -1  # the header is not a contact
        async for line in export_contacts(session, runtime.cipher, tenant.id, unmask=True):
            handle.write(line)
            count += 1
        return count

    try:
        count = run_with_session(go)
    except BaseException:
        if partial is not None:
            handle.close()
            partial.unlink(missing_ok=True)
        raise
    if partial is not None and output is not None:
        handle.close()
        partial.replace(output)
    click.echo(f"exported {count} contact(s)" + (f" to {output}" if output else ""), err=True)
