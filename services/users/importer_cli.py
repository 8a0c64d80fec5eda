"""What `scrm contacts import|export` do (declared in services/users/cli.py, which
imports this module only when one of them runs)."""

from __future__ import annotations

import contextlib
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


def import_file(file: Path, slug: str, report_path: Path | None) -> None:
    """`scrm contacts import`: load the file, print the counts, write the rejected rows."""
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


def export_file(slug: str, output: Path | None) -> None:
    """`scrm contacts export`: every contact to `output` (written whole or not at all) or
    to standard output."""
    partial = output.with_name(output.name + ".partial") if output is not None else None
    if partial is not None:
        # Unmasked personal data: readable by the owner only.
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        handle: IO[str] = open(descriptor, "w", encoding="utf-8", newline="")  # noqa: SIM115
    else:
        handle = sys.stdout

    async def go(session: AsyncSession, runtime: Runtime) -> tuple[int, bool]:
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
        # A reader that stops early (`| head`) has read what it read: the audit entry
        # is committed all the same. The stream (a server-side cursor) is closed first.
        async with contextlib.aclosing(
            export_contacts(session, runtime.cipher, tenant.id, unmask=True)
        ) as lines:
            async for line in lines:
                try:
                    handle.write(line)
                except BrokenPipeError:
                    return count, False
                count += 1
        try:
            handle.flush()
        except BrokenPipeError:
            return count, False
        return count, True

    try:
        count, complete = run_with_session(go)
        if not complete:
            raise BrokenPipeError  # ends the command as shared.cli ends any with a closed output
    except BaseException:
        if partial is not None:
            handle.close()
            partial.unlink(missing_ok=True)
        raise
    if partial is not None and output is not None:
        handle.close()
        partial.replace(output)
    click.echo(f"exported {count} contact(s)" + (f" to {output}" if output else ""), err=True)
