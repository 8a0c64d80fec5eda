"""Tables owned by the campaigns service, declared on shared.db.Base so the single
Alembic history sees them. Every tenant-owned table mixes in `TenantScoped`."""

from __future__ import annotations
