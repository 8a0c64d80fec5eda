"""Contacts in and out as CSV: a set-based import and a streamed export.

Import. The file has a header row naming identity kinds (`phone`, `unionid`, ...),
`name`, `owner_staff_userid` and `attr.<name>` columns; any other column refuses
the whole file. Rows are validated one by one (a bad row is reported with its
line and reason, the others load) and then loaded in chunks of `CHUNK_ROWS`:
blind indexes, encryptions and name grams are computed in Python, COPYed into
temp tables, and applied with a handful of set-based statements per chunk.

Transactions: the whole file is loaded in the caller's ONE transaction (the
request's, or the command's), chunk after chunk, so either every valid row is
loaded or, when the file is refused midway (malformed CSV, not UTF-8) or the
database fails, nothing is. Imports of one tenant are serialised by an
advisory lock; matched contacts are locked (in id order, like `identity.merge`).

Resolution per row: identities that match no contact create one; identities
that all point to one contact update it (name if given, attributes merged,
owner if it has none, new identities attached); identities of two or more
contacts reject the row (merging is a decision, not a bulk side effect). A row
sharing an identity with an earlier row of the file that passed validation
(whether or not that row then loaded) is rejected as its duplicate. A row
that changes nothing counts as unchanged, so re-running a file creates and
changes nothing.

SQL lives here rather than in repository.py: these statements only make sense
together, around the temp tables of one import.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import re
import uuid
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.users.identity import identity_context, lookup_keys, name_context, normalise
from services.users.models import IDENTITY_KINDS
from shared.crypto import FieldCipher
from shared.errors import Conflict, InvalidInput
from shared.events import NOTIFY_CHANNEL
from shared.privacy import PersonalKind, mask

CHUNK_ROWS = 20_000
MAX_NAME = 200
MAX_OWNER = 64
MAX_ATTRIBUTE_VALUE = 1000
MAX_ATTRIBUTE_COLUMNS = 200
SOURCE = "import"
IMPORTED_EVENT = "contact.imported"
EXPORT_PAGE_ROWS = 2000
_ATTRIBUTE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_FIXED = ("name", "owner_staff_userid")
_MASK_KIND: dict[str, PersonalKind] = {"phone": "phone", "email": "email", "name": "name"}

Progress = Callable[[int], object]


class ImportRefused(InvalidInput):
    """The file as a whole cannot be imported; nothing of it is written."""

    code = "import_refused"


@dataclass
class ImportReport:
    """What an import did, row by row: every data row is counted exactly once."""

    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    # The header and the cells of rejected rows, for a report the user can fix and re-import.
    header: list[str] = field(default_factory=list, repr=False)
    rejected_cells: dict[int, list[str]] = field(default_factory=dict, repr=False)
    # How the file's lines end (its header's ending), for that report: "\r\n" if unknown.
    line_ending: str = field(default="\r\n", repr=False)


# -- reading and validating -----------------------------------------------------------


@dataclass(frozen=True)
class _Columns:
    width: int
    identities: tuple[tuple[int, str], ...]
    attributes: tuple[tuple[int, str], ...]
    name: int | None
    owner: int | None


@dataclass
class _Row:
    line: int
    cells: list[str]
    identities: dict[str, str]  # kind -> normalised value
    name: str | None
    owner: str | None
    attributes: dict[str, str]
    keys: dict[str, bytes] = field(default_factory=dict)  # kind -> blind index


def _columns(header: list[str]) -> _Columns:
    names = [h.strip() for h in header]
    if names:
        names[0] = names[0].removeprefix("\ufeff")
    unknown = [
        n
        for n in names
        if n not in IDENTITY_KINDS
        and n not in _FIXED
        and not (n.startswith("attr.") and _ATTRIBUTE.fullmatch(n[5:]))
    ]
    if unknown:
        raise ImportRefused(
            f"unknown column(s): {', '.join(repr(n) for n in unknown)}; columns are identity "
            f"kinds ({', '.join(IDENTITY_KINDS)}), name, owner_staff_userid and attr.<name> "
            "(<name>: a letter or _, then up to 63 letters, digits or _)",
            code="unknown_columns",
            details={"columns": unknown},
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ImportRefused(
            f"repeated column(s): {', '.join(repeated)}",
            code="repeated_columns",
            details={"columns": repeated},
        )
    identities = tuple((i, n) for i, n in enumerate(names) if n in IDENTITY_KINDS)
    if not identities:
        raise ImportRefused(
            f"the header names no identity column ({', '.join(IDENTITY_KINDS)})",
            code="no_identity_column",
        )
    attributes = tuple((i, n[5:]) for i, n in enumerate(names) if n.startswith("attr."))
    if len(attributes) > MAX_ATTRIBUTE_COLUMNS:
        raise ImportRefused(
            f"at most {MAX_ATTRIBUTE_COLUMNS} attr.* columns", code="too_many_columns"
        )
    return _Columns(
        width=len(names),
        identities=identities,
        attributes=attributes,
        name=names.index("name") if "name" in names else None,
        owner=names.index("owner_staff_userid") if "owner_staff_userid" in names else None,
    )


def _validate(columns: _Columns, line: int, cells: list[str]) -> _Row | str:
    """The row, or why it is rejected."""
    if len(cells) != columns.width:
        return f"has {len(cells)} fields, the header has {columns.width}"
    if any("\x00" in cell for cell in cells):
        return "contains a NUL character"
    identities: dict[str, str] = {}
    for index, kind in columns.identities:
        if cells[index].strip():
            try:
                identities[kind] = normalise(kind, cells[index])
            except InvalidInput as exc:
                return exc.message
    if not identities:
        return f"no identifier: fill at least one of {', '.join(k for _, k in columns.identities)}"
    name = cells[columns.name].strip() if columns.name is not None else ""
    if len(name) > MAX_NAME:
        return f"name is longer than {MAX_NAME} characters"
    owner = cells[columns.owner].strip() if columns.owner is not None else ""
    if len(owner) > MAX_OWNER:
        return f"owner_staff_userid is longer than {MAX_OWNER} characters"
    attributes: dict[str, str] = {}
    for index, key in columns.attributes:
        value = cells[index].strip()
        if len(value) > MAX_ATTRIBUTE_VALUE:
            return f"attr.{key} is longer than {MAX_ATTRIBUTE_VALUE} characters"
        if value:
            attributes[key] = value
    return _Row(line, cells, identities, name or None, owner or None, attributes)


def _noting_line_ending(lines: Iterable[str], report: ImportReport) -> Iterator[str]:
    """The lines as they are (read with `newline=""`); the first one's ending is noted
    as the file's. Decoding errors are raised where the CSV reader reports them."""
    rest = iter(lines)
    for first in rest:
        if first.endswith("\r\n"):
            report.line_ending = "\r\n"
        elif first.endswith(("\n", "\r")):
            report.line_ending = first[-1]
        yield first
        break
    yield from rest


class _Reader:
    """Reads the file a chunk of validated rows at a time; rejects duplicates across chunks."""

    def __init__(self, lines: Iterable[str], report: ImportReport) -> None:
        self._csv = csv.reader(_noting_line_ending(lines, report))
        self._report = report
        self._first_line: dict[tuple[str, str], int] = {}
        header = next(self._records(), None)
        if header is None:
            raise ImportRefused("the file is empty: a header row is needed", code="empty_file")
        self.columns = _columns(header[1])
        report.header = header[1]

    def _records(self) -> Iterator[tuple[int, list[str]]]:
        """(first line number, cells) of each non-blank record."""
        previous = self._csv.line_num
        while True:
            try:
                cells = next(self._csv)
            except StopIteration:
                return
            except UnicodeDecodeError:
                raise ImportRefused(
                    f"line {self._csv.line_num + 1}: the file is not UTF-8 text",
                    code="not_utf8",
                ) from None
            except csv.Error as exc:
                raise ImportRefused(
                    f"line {self._csv.line_num}: malformed CSV ({exc})", code="malformed_csv"
                ) from None
            start, previous = previous + 1, self._csv.line_num
            if cells and any(cells):
                yield start, cells

    def chunk(self, size: int) -> tuple[list[_Row], int]:
        """The next up to `size` valid rows (rejected ones go to the report), and how many
        data rows were read for them; no rows at the end of the file."""
        rows: list[_Row] = []
        read = 0
        for line, cells in self._records():
            read += 1
            self._report.rows += 1
            row = _validate(self.columns, line, cells)
            if isinstance(row, str):
                self._reject(line, cells, row)
            elif (earlier := self._duplicate_of(row)) is not None:
                self._reject(line, cells, f"duplicate of line {earlier[1]} (same {earlier[0]})")
            else:
                rows.append(row)
                if len(rows) >= size:
                    break
        return rows, read

    def _duplicate_of(self, row: _Row) -> tuple[str, int] | None:
        for kind, value in row.identities.items():
            if (kind, value) in self._first_line:
                return kind, self._first_line[(kind, value)]
        for kind, value in row.identities.items():
            self._first_line[(kind, value)] = row.line
        return None

    def _reject(self, line: int, cells: list[str], reason: str) -> None:
        self._report.rejected.append((line, reason))
        self._report.rejected_cells[line] = cells


# -- loading ----------------------------------------------------------------------------

_TEMP_TABLES = [
    """CREATE TEMP TABLE IF NOT EXISTS import_keys
         (pos int NOT NULL, kind text NOT NULL, bidx bytea NOT NULL) ON COMMIT DROP""",
    """CREATE TEMP TABLE IF NOT EXISTS import_new_contacts
         (id uuid NOT NULL, name_enc bytea, name_grams bytea[] NOT NULL, owner text,
          attributes text NOT NULL) ON COMMIT DROP""",
    """CREATE TEMP TABLE IF NOT EXISTS import_changed_contacts
         (id uuid NOT NULL, name_enc bytea, name_grams bytea[], owner text,
          attributes text NOT NULL) ON COMMIT DROP""",
    """CREATE TEMP TABLE IF NOT EXISTS import_new_identities
         (contact_id uuid NOT NULL, kind text NOT NULL, bidx bytea NOT NULL,
          enc bytea NOT NULL) ON COMMIT DROP""",
]
_CLEAR = "TRUNCATE import_keys, import_new_contacts, import_changed_contacts, import_new_identities"
_MATCHED = """
    FROM import_keys k
    JOIN contact_identities i
      ON i.tenant_id = :t AND i.kind = k.kind AND i.value_bidx = k.bidx
"""
# Locked first, in id order (as identity.merge locks), then their identities re-read:
# an identity moved by a merge that committed meanwhile shows up as an unlocked owner.
# NO KEY: excludes merges and other updates, not other writers' identity inserts (FK checks).
_LOCK_CONTACTS = f"""
    SELECT c.id, c.name_enc, c.attributes, c.owner_staff_userid, c.merged_into_id IS NOT NULL
      FROM contacts c
     WHERE c.tenant_id = :t AND c.id IN (SELECT i.contact_id {_MATCHED})
     ORDER BY c.id
       FOR NO KEY UPDATE
"""
_OWNERS = f"SELECT k.pos, k.kind, i.contact_id {_MATCHED}"
_INSERT_CONTACTS = """
    INSERT INTO contacts (id, tenant_id, name_enc, name_grams, owner_staff_userid, attributes)
    SELECT id, :t, name_enc, name_grams, owner, attributes::jsonb FROM import_new_contacts
"""
_PUBLISH_IMPORTED = f"""
    INSERT INTO outbox_events (event_id, tenant_id, type, payload)
    SELECT gen_random_uuid(), :t, '{IMPORTED_EVENT}',
           jsonb_build_object('contact_id', id::text, 'source', '{SOURCE}')
      FROM import_new_contacts
"""
# contact.profile_changed (see repository.publish_profiles) for each created contact,
# and for each matched one whose owner or attributes this chunk changed.
_PROFILE_PAYLOAD = """
    SELECT gen_random_uuid(), c.tenant_id, 'contact.profile_changed',
           jsonb_build_object('contact_id', c.id::text, 'created_at', to_jsonb(c.created_at),
                              'owner_staff', c.owner_staff_userid, 'channel', c.channel_state,
                              'attributes', c.attributes)
"""
_PUBLISH_CREATED_PROFILES = f"""
    INSERT INTO outbox_events (event_id, tenant_id, type, payload)
    {_PROFILE_PAYLOAD}
      FROM import_new_contacts n JOIN contacts c ON c.tenant_id = :t AND c.id = n.id
"""
_PUBLISH_CHANGED_PROFILES = f"""
    INSERT INTO outbox_events (event_id, tenant_id, type, payload)
    {_PROFILE_PAYLOAD}
      FROM import_changed_contacts u JOIN contacts c ON c.tenant_id = :t AND c.id = u.id
     WHERE u.owner IS NOT NULL OR u.attributes::jsonb <> '{{}}'::jsonb
"""
_UPDATE_CONTACTS = """
    UPDATE contacts c
       SET name_enc = COALESCE(u.name_enc, c.name_enc),
           name_grams = COALESCE(u.name_grams, c.name_grams),
           owner_staff_userid = COALESCE(c.owner_staff_userid, u.owner),
           attributes = c.attributes || u.attributes::jsonb,
           updated_at = now()
      FROM import_changed_contacts u
     WHERE c.tenant_id = :t AND c.id = u.id
"""
_INSERT_IDENTITIES = f"""
    INSERT INTO contact_identities (tenant_id, contact_id, kind, value_bidx, value_enc, source)
    SELECT :t, contact_id, kind, bidx, enc, '{SOURCE}' FROM import_new_identities
        ON CONFLICT ON CONSTRAINT uq_contact_identities_value DO NOTHING
"""


@dataclass
class _Existing:
    """A matched contact as this import has left it so far."""

    name_enc: bytes | None
    attributes: dict[str, Any]
    owner: str | None
    merged: bool
    name: str | None = None
    name_known: bool = False


@dataclass
class _Change:
    name: str | None = None
    owner: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class _Plan:
    new_contacts: list[tuple[Any, ...]] = field(default_factory=list)
    changed_contacts: list[tuple[Any, ...]] = field(default_factory=list)
    new_identities: list[tuple[Any, ...]] = field(default_factory=list)


class _Loader:
    def __init__(
        self,
        session: AsyncSession,
        cipher: FieldCipher,
        tenant_id: uuid.UUID,
        report: ImportReport,
    ) -> None:
        self.session = session
        self.cipher = cipher
        self.tenant_id = tenant_id
        self.tenant = str(tenant_id)
        self.report = report
        self.name_context = name_context(tenant_id)
        self.identity_contexts = {k: identity_context(tenant_id, k) for k in IDENTITY_KINDS}
        self._grams: dict[str, bytes] = {}  # gram -> blind index; grams repeat a lot
        self.published = False  # profile changes of matched contacts went to the outbox

    def blind_indexes(self, rows: list[_Row]) -> list[tuple[int, str, bytes]]:
        """What to look each row's identities up by; a row's new identities get the
        first (canonical) one, and the others find what earlier versions stored."""
        keys = []
        for pos, row in enumerate(rows):
            for kind, value in row.identities.items():
                canonical, *legacy = lookup_keys(self.cipher, self.tenant_id, kind, value)
                row.keys[kind] = canonical
                keys.append((pos, kind, canonical))
                keys.extend((pos, kind, bidx) for bidx in legacy)
        return keys

    def name_grams(self, name: str) -> list[bytes]:
        # As identity.name_grams, with each gram's index computed once per import.
        folded = "".join(name.lower().split())
        grams = set(folded) | {folded[i : i + 2] for i in range(len(folded) - 1)}
        indexes = []
        for gram in grams:
            index = self._grams.get(gram)
            if index is None:
                index = self.cipher.blind_index(gram, kind="name", tenant=self.tenant)
                self._grams[gram] = index
            indexes.append(index)
        return sorted(indexes)

    def plan(
        self,
        rows: list[_Row],
        owners: Sequence[tuple[int, str, uuid.UUID]],
        existing: dict[uuid.UUID, _Existing],
    ) -> _Plan:
        """Decide each row's fate against the contacts as they stand; count it."""
        owner_of: dict[int, dict[str, uuid.UUID]] = {}
        for pos, kind, contact_id in owners:
            owner_of.setdefault(pos, {})[kind] = contact_id
        plan = _Plan()
        changes: dict[uuid.UUID, _Change] = {}
        for pos, row in enumerate(rows):
            matched = owner_of.get(pos, {})
            found = set(matched.values())
            if len(found) > 1:
                self._reject(row, "identifiers belong to different contacts: merge them first")
                continue
            if not found:
                contact_id = uuid.uuid4()
                plan.new_contacts.append(
                    (
                        contact_id,
                        self._encrypt_name(row.name),
                        self.name_grams(row.name) if row.name else [],
                        row.owner,
                        json.dumps(row.attributes, ensure_ascii=False),
                    )
                )
                self._attach(plan, contact_id, row, row.identities)
                self.report.created += 1
                continue
            [contact_id] = found
            contact = existing.get(contact_id)
            if contact is None or contact.merged:
                self._reject(row, "its contact was merged during the import: import the row again")
                continue
            change = self._apply(contact, row)
            missing = {k: v for k, v in row.identities.items() if k not in matched}
            self._attach(plan, contact_id, row, missing)
            if change is None and not missing:
                self.report.unchanged += 1
                continue
            self.report.updated += 1
            folded = changes.setdefault(contact_id, _Change())
            if change is not None:
                folded.name = change.name or folded.name
                folded.owner = folded.owner or change.owner
                folded.attributes.update(change.attributes)
        for contact_id, change in changes.items():
            plan.changed_contacts.append(
                (
                    contact_id,
                    self._encrypt_name(change.name),
                    self.name_grams(change.name) if change.name else None,
                    change.owner,
                    json.dumps(change.attributes, ensure_ascii=False),
                )
            )
        return plan

    def _apply(self, contact: _Existing, row: _Row) -> _Change | None:
        """What `row` changes in `contact` (now applied to it), or None."""
        change = _Change()
        if row.name is not None and row.name != self._current_name(contact):
            change.name = contact.name = row.name
        if row.owner is not None and contact.owner is None:
            change.owner = contact.owner = row.owner
        change.attributes = {
            k: v for k, v in row.attributes.items() if contact.attributes.get(k) != v
        }
        contact.attributes.update(change.attributes)
        if change.name is None and change.owner is None and not change.attributes:
            return None
        return change

    def _current_name(self, contact: _Existing) -> str | None:
        if not contact.name_known:
            contact.name_known = True
            if contact.name_enc is not None:
                contact.name = self.cipher.decrypt(contact.name_enc, context=self.name_context)
        return contact.name

    def _encrypt_name(self, name: str | None) -> bytes | None:
        return None if name is None else self.cipher.encrypt(name, context=self.name_context)

    def _attach(
        self, plan: _Plan, contact_id: uuid.UUID, row: _Row, identities: dict[str, str]
    ) -> None:
        for kind, value in identities.items():
            enc = self.cipher.encrypt(value, context=self.identity_contexts[kind])
            plan.new_identities.append((contact_id, kind, row.keys[kind], enc))

    def _reject(self, row: _Row, reason: str) -> None:
        self.report.rejected.append((row.line, reason))
        self.report.rejected_cells[row.line] = row.cells

    async def load(self, rows: list[_Row], keys: list[tuple[int, str, bytes]]) -> int:
        """Apply one chunk of valid rows; returns how many contacts it created."""
        await self._execute(_CLEAR)
        await self._copy("import_keys", ("pos", "kind", "bidx"), keys)
        await self._execute("ANALYZE import_keys")
        existing = {
            contact_id: _Existing(name_enc, dict(attributes), owner, merged)
            for contact_id, name_enc, attributes, owner, merged in (
                await self.session.execute(text(_LOCK_CONTACTS), {"t": self.tenant_id})
            )
        }
        owners = [
            (pos, kind, contact_id)
            for pos, kind, contact_id in await self.session.execute(
                text(_OWNERS), {"t": self.tenant_id}
            )
        ]
        plan = await asyncio.to_thread(self.plan, rows, owners, existing)
        contact_columns = ("id", "name_enc", "name_grams", "owner", "attributes")
        await self._copy("import_new_contacts", contact_columns, plan.new_contacts)
        await self._copy("import_changed_contacts", contact_columns, plan.changed_contacts)
        await self._copy(
            "import_new_identities", ("contact_id", "kind", "bidx", "enc"), plan.new_identities
        )
        if plan.new_contacts:
            await self._execute(_INSERT_CONTACTS)
            await self._execute(_PUBLISH_IMPORTED)
            await self._execute(_PUBLISH_CREATED_PROFILES)
        if plan.changed_contacts:
            await self._execute(_UPDATE_CONTACTS)
            if await self._execute(_PUBLISH_CHANGED_PROFILES):
                self.published = True
        if plan.new_identities:
            attached = await self._execute(_INSERT_IDENTITIES)
            if attached != len(plan.new_identities):
                # Another writer (a webhook, a sync) attached one of these identifiers
                # since they were read: the transaction is rolled back, re-running is safe.
                raise Conflict(
                    "identifiers were added by another writer during the import; "
                    "nothing was imported: run the import again",
                    code="import_conflict",
                )
        return len(plan.new_contacts)

    async def _execute(self, statement: str) -> int:
        result = await self.session.execute(text(statement), {"t": self.tenant_id})
        return int(getattr(result, "rowcount", 0) or 0)

    async def _copy(
        self, table: str, columns: Sequence[str], records: list[tuple[Any, ...]]
    ) -> None:
        if not records:
            return
        connection = await self.session.connection()
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        await driver.copy_records_to_table(table, records=records, columns=list(columns))


async def import_contacts(
    session: AsyncSession,
    cipher: FieldCipher,
    tenant_id: uuid.UUID,
    lines: Iterable[str],
    *,
    progress: Progress | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> ImportReport:
    """Import a contacts CSV (text lines, header first) in the caller's transaction.

    Raises ImportRefused when the file as a whole cannot be imported (unknown
    columns, not UTF-8, malformed CSV); the caller's transaction must then be
    rolled back, as it is by the request and command units of work. `progress`
    is called with the number of data rows handled after each chunk.
    """
    report = ImportReport()
    reader = _Reader(lines, report)
    # One import per tenant at a time: two would otherwise race for the same identities.
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
        {"k": f"contacts-import:{tenant_id}"},
    )
    for statement in _TEMP_TABLES:
        await session.execute(text(statement))
    loader = _Loader(session, cipher, tenant_id, report)

    def read() -> tuple[list[_Row], int, list[tuple[int, str, bytes]]]:
        rows, count = reader.chunk(chunk_rows)
        return rows, count, loader.blind_indexes(rows)

    created = 0
    # The next chunk is read, validated and indexed (in a thread) while the database
    # applies this one. Readers and the planner touch different parts of the report.
    ahead = asyncio.ensure_future(asyncio.to_thread(read))
    try:
        while True:
            rows, count, keys = await ahead
            if rows:
                ahead = asyncio.ensure_future(asyncio.to_thread(read))
                created += await loader.load(rows, keys)
            if progress is not None and count:
                progress(count)
            if not rows:
                break
    finally:
        if not ahead.done():
            # Let the reader thread finish before the caller closes its file.
            with contextlib.suppress(Exception):
                await ahead
    if created or loader.published:
        # NOTIFY is transactional: the relay wakes when these events are committed.
        await session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
    report.rejected.sort()
    return report


# -- export -----------------------------------------------------------------------------

_ATTRIBUTE_KEYS = """
    SELECT DISTINCT key
      FROM contacts c, jsonb_object_keys(c.attributes) AS key
     WHERE c.tenant_id = :t AND c.merged_into_id IS NULL
     ORDER BY key
"""
_EXPORT = """
    SELECT c.id, c.name_enc, c.owner_staff_userid, c.lifecycle_stage, c.created_at,
           c.attributes, ids.kinds, ids.tokens
      FROM contacts c
      LEFT JOIN LATERAL (
            SELECT array_agg(i.kind ORDER BY i.id) AS kinds,
                   array_agg(i.value_enc ORDER BY i.id) AS tokens
              FROM contact_identities i
             WHERE i.tenant_id = c.tenant_id AND i.contact_id = c.id) ids ON true
     WHERE c.tenant_id = :t AND c.merged_into_id IS NULL
     ORDER BY c.created_at, c.id
"""
EXPORT_FIELDS = ("name", *IDENTITY_KINDS)


class _CsvLine:
    def __init__(self) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer)

    def __call__(self, cells: Sequence[object]) -> str:
        self._buffer.seek(0)
        self._buffer.truncate()
        self._writer.writerow(cells)
        return self._buffer.getvalue()


async def export_contacts(
    session: AsyncSession, cipher: FieldCipher, tenant_id: uuid.UUID, *, unmask: bool
) -> AsyncGenerator[str, None]:
    """CSV lines (header first) of the tenant's contacts that were not merged away.

    Personal data is masked unless `unmask`; the caller audits unmasked exports.
    Rows are read through a server-side cursor, a page at a time. Attribute keys
    that first appear after the header was written are left out.
    """
    attribute_keys = list(await session.scalars(text(_ATTRIBUTE_KEYS), {"t": tenant_id}))
    line = _CsvLine()
    yield line(
        [
            "id",
            "name",
            *IDENTITY_KINDS,
            "owner_staff_userid",
            "lifecycle_stage",
            "created_at",
            *(f"attr.{key}" for key in attribute_keys),
        ]
    )
    name_ctx = name_context(tenant_id)
    contexts = {kind: identity_context(tenant_id, kind) for kind in IDENTITY_KINDS}

    def shown(value: str, kind: str) -> str:
        return value if unmask else mask(value, _MASK_KIND.get(kind, "identifier"))

    result = await session.stream(text(_EXPORT), {"t": tenant_id})
    async for page in result.partitions(EXPORT_PAGE_ROWS):
        for contact_id, name_enc, owner, stage, created_at, attributes, kinds, tokens in page:
            values: dict[str, list[str]] = {}
            for kind, token in zip(kinds or (), tokens or (), strict=True):
                plain = cipher.decrypt(token, context=contexts[kind])
                values.setdefault(kind, []).append(shown(plain, kind))
            name = cipher.decrypt(name_enc, context=name_ctx) if name_enc is not None else ""
            yield line(
                [
                    contact_id,
                    shown(name, "name"),
                    *(";".join(values.get(kind, ())) for kind in IDENTITY_KINDS),
                    owner or "",
                    stage,
                    created_at.isoformat(),
                    *(_cell(attributes.get(key)) for key in attribute_keys),
                ]
            )


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)
