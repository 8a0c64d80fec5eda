"""HTTP contract of the WeCom corp-tag mirror."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

OpKind = Literal["sync", "fetch", "order", "push_tag", "push_group", "delete", "mark", "refetch"]
OpStatus = Literal["pending", "in_flight", "done", "failed"]


class WeComTagOp(BaseModel):
    """One queued WeCom operation and how it went."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: OpKind
    status: OpStatus
    attempts: int
    payload: dict[str, Any]
    next_attempt_at: datetime = Field(description="When a pending op is tried (again)")
    last_error: str | None
    result: dict[str, Any] | None = Field(description="What a done op did (a sync's counts)")
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class WeComTagOpPage(BaseModel):
    items: list[WeComTagOp]
    next_cursor: str | None


class CorpTag(BaseModel):
    wecom_id: str
    name: str
    order: int
    tag_id: int | None = Field(description="The local tag mirroring it")


class CorpTagGroup(BaseModel):
    wecom_id: str
    name: str
    order: int
    group_id: int | None = Field(description="The local tag group mirroring it")
    tags: list[CorpTag]


class CorpTagList(BaseModel):
    """The corp's tags as WeCom last showed them, larger order first (WeCom's order)."""

    groups: list[CorpTagGroup]
