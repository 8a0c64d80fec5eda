"""Domain errors of the tagging service's tags part."""

from __future__ import annotations

from typing import Any

from services.tagging.exceptions import TaggingError
from shared.errors import Conflict, InvalidInput, NotFound


class ConcurrentTagWrites(TaggingError):
    """Other transactions kept adding the same contact tags meanwhile: try again."""

    code = "concurrent_tag_writes"
    status_code = 409

    def __init__(self) -> None:
        super().__init__("the same contact tags were being written concurrently; retry")


class TagGroupNotFound(NotFound):
    code = "tag_group_not_found"

    def __init__(self, group_id: int) -> None:
        super().__init__("no such tag group", details={"group_id": group_id})


class TagNotFound(NotFound):
    code = "tag_not_found"

    def __init__(self, tag_id: int) -> None:
        super().__init__("no such tag", details={"tag_id": tag_id})


class ContactTagNotFound(NotFound):
    code = "contact_tag_not_found"

    def __init__(self, tag_id: int) -> None:
        super().__init__("the contact does not have this tag", details={"tag_id": tag_id})


class TagGroupNameTaken(Conflict):
    code = "tag_group_name_taken"

    def __init__(self, name: str) -> None:
        super().__init__("a tag group with this name exists", details={"name": name})


class TagNameTaken(Conflict):
    code = "tag_name_taken"

    def __init__(self, name: str) -> None:
        super().__init__("a tag with this name exists in the group", details={"name": name})


class TooManyTags(InvalidInput):
    code = "too_many_tags"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"a tenant has at most {limit} tags", details={"limit": limit, "field": "name"}
        )


class UnknownTagGroup(InvalidInput):
    """A tag names a group the tenant does not have (422: the body is wrong)."""

    code = "unknown_tag_group"

    def __init__(self, group_id: int) -> None:
        super().__init__("no such tag group", details={"field": "group_id", "group_id": group_id})


class InvalidTagImport(InvalidInput):
    code = "invalid_tag_import"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message, details=details)


class UnknownTag(InvalidInput):
    """The body names a tag the tenant does not have."""

    code = "unknown_tag"

    def __init__(self, tag_id: int) -> None:
        super().__init__("no such tag", details={"field": "tag_id", "tag_id": tag_id})


class UnknownSegment(InvalidInput):
    code = "unknown_segment"

    def __init__(self, segment_id: int) -> None:
        super().__init__(
            "no such segment", details={"field": "segment_id", "segment_id": segment_id}
        )


class ContactNotFound(NotFound):
    """Tags belong to live contacts: a merged contact's are its survivor's."""

    code = "contact_not_found"

    def __init__(self, status: str) -> None:
        super().__init__("no such live contact", details={"status": status})
