"""Domain errors of the tagging service's rules part."""

from __future__ import annotations

from shared.errors import Conflict, InvalidInput, NotFound


class TagRuleNotFound(NotFound):
    code = "tag_rule_not_found"

    def __init__(self, rule_id: int) -> None:
        super().__init__("no such tag rule", details={"rule_id": rule_id})


class RuleNameTaken(Conflict):
    code = "rule_name_taken"

    def __init__(self, name: str) -> None:
        super().__init__("a tag rule with this name exists", details={"name": name})


class UnknownRuleTarget(InvalidInput):
    """The rule names a tag or group the tenant does not have (422: the body is wrong)."""

    def __init__(self, field: str, value: int) -> None:
        message = f"no such {'tag' if field == 'tag_id' else 'tag group'}: {field} {value}"
        super().__init__(
            message,
            details=[
                {"loc": ["body", "target", field], "message": message, "type": f"unknown_{field}"}
            ],
        )
