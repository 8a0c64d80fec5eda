"""The CSV file of a bulk tagging import: a header row naming `contact_id` (and,
optionally, `weight`), then one contact per row.

The file is taken whole or not at all: any bad row (a contact id that is not a
UUID, a weight that is not a number in (0, 1,000,000], another number of fields
than the header) refuses it with every bad row's line and reason, and nothing is
applied.
"""

from __future__ import annotations

import csv
import io
import math
import uuid
from dataclasses import dataclass

from services.tagging.tags.exceptions import InvalidTagImport
from services.tagging.tags.schemas import MAX_BULK_CONTACTS, MAX_WEIGHT

COLUMNS = ("contact_id", "weight")
MAX_REPORTED = 1000


@dataclass(frozen=True)
class TagImport:
    contact_ids: list[uuid.UUID]
    weights: list[float | None]


def _weight(cell: str) -> float | None:
    if not cell.strip():
        return None
    try:
        value = float(cell)
    except ValueError:
        raise ValueError(f"weight {cell!r} is not a number") from None
    if not math.isfinite(value) or not 0 < value <= MAX_WEIGHT:
        raise ValueError(f"weight must be greater than 0 and at most {MAX_WEIGHT:g}")
    return value


def parse_tag_import(body: bytes) -> TagImport:
    """The rows of the file, or InvalidTagImport (422) naming what is wrong."""
    try:
        content = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidTagImport("the file is not UTF-8 text", {"reason": "not_utf8"}) from None
    reader = csv.reader(io.StringIO(content, newline=""), strict=True)
    try:
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except csv.Error as error:
        raise InvalidTagImport(
            f"malformed CSV at line {reader.line_num}: {error}", {"reason": "malformed_csv"}
        ) from None
    if not rows:
        raise InvalidTagImport("the file is empty", {"reason": "empty_file"})
    _, header = rows[0]
    names = [cell.strip() for cell in header]
    unknown = [n for n in names if n not in COLUMNS]
    if unknown or len(set(names)) != len(names) or "contact_id" not in names:
        raise InvalidTagImport(
            "the header must name contact_id and, optionally, weight, each once",
            {"reason": "bad_header", "columns": names},
        )
    if len(rows) - 1 > MAX_BULK_CONTACTS:
        raise InvalidTagImport(
            f"at most {MAX_BULK_CONTACTS} rows per file",
            {"reason": "too_many_rows", "limit": MAX_BULK_CONTACTS},
        )
    at_id = names.index("contact_id")
    at_weight = names.index("weight") if "weight" in names else None
    parsed = TagImport([], [])
    rejected: list[dict[str, object]] = []
    for line, row in rows[1:]:
        try:
            if len(row) != len(names):
                raise ValueError(f"{len(row)} fields where the header has {len(names)}")
            try:
                contact_id = uuid.UUID(row[at_id].strip())
            except ValueError:
                raise ValueError(f"contact_id {row[at_id]!r} is not a UUID") from None
            weight = _weight(row[at_weight]) if at_weight is not None else None
        except ValueError as error:
            rejected.append({"line": line, "reason": str(error)})
            continue
        parsed.contact_ids.append(contact_id)
        parsed.weights.append(weight)
    if rejected:
        raise InvalidTagImport(
            f"{len(rejected)} rows are invalid; nothing was applied",
            {"reason": "invalid_rows", "rejected": rejected[:MAX_REPORTED], "count": len(rejected)},
        )
    if not parsed.contact_ids:
        raise InvalidTagImport("the file has no rows", {"reason": "empty_file"})
    return parsed
