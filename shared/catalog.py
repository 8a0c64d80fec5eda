"""The event catalog: every event type that enters scrm or moves between its services.

- **inbound**: what integrations send (`POST /v1/events` and signed webhooks,
  `via="events"`) and the WeCom callbacks the users service applies
  (`via="wecom"`);
- **domain**: what the services publish on the bus (`publish(session, type, ...)`)
  and consume with `@subscribe`.

Each service declares its types in `services/<name>/events.py` as `EVENTS`, a
list of `EventType` (the platform's own are below), with a pydantic model of
the properties (inbound) or the payload (domain) and an example that the model
accepts. `catalog()` collects them, as shared.app collects the routers. The
OpenAPI document (a schema per type, and the body of `POST /v1/events`), the
README's table (`scrm events catalog --markdown`) and the test that every
published or subscribed type is declared all read this one source; services
that react to events name their types and properties by it.
"""

from __future__ import annotations

import importlib
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from shared.events import SERVICES

Direction = Literal["inbound", "domain"]
Via = Literal["events", "wecom", "bus"]
REF_TEMPLATE = "#/components/schemas/{model}"


@dataclass(frozen=True)
class EventType:
    """One event type. `service` publishes a domain event, or applies an inbound one."""

    name: str
    direction: Direction
    service: str
    description: str
    model: type[BaseModel]
    example: Mapping[str, Any] = field(default_factory=dict)
    via: Via = "bus"

    @property
    def key(self) -> tuple[Direction, str]:
        return (self.direction, self.name)


class EventCatalog:
    """Every declared type, checked: unique per direction, each example valid."""

    def __init__(self, types: Iterable[EventType]) -> None:
        self._types: dict[tuple[Direction, str], EventType] = {}
        for declared in types:
            if declared.key in self._types:
                raise ValueError(f"{declared.direction} event {declared.name!r} declared twice")
            if declared.service not in (*SERVICES, "platform"):
                raise ValueError(f"{declared.name}: unknown service {declared.service!r}")
            if declared.direction == "inbound" and declared.via == "bus":
                raise ValueError(f"{declared.name}: an inbound type comes via events or wecom")
            declared.model.model_validate(declared.example)
            self._types[declared.key] = declared

    def __iter__(self) -> Any:
        return iter(sorted(self._types.values(), key=_order))

    def get(self, direction: Direction, name: str) -> EventType | None:
        found = self._types.get((direction, name))
        if found is None and name.startswith("custom."):
            found = self._types.get((direction, "custom.*"))
        return found

    def inbound(self, via: Via | None = None) -> list[EventType]:
        return [t for t in self if t.direction == "inbound" and via in (None, t.via)]

    def domain(self) -> list[EventType]:
        return [t for t in self if t.direction == "domain"]


def _order(declared: EventType) -> tuple[int, str]:
    # Stable: within a direction and channel, types keep their declaration order.
    return (0 if declared.direction == "inbound" else 1, declared.via)


# -- the platform's own events (shared/tenancy.py) -----------------------------------------


class TenantCreated(BaseModel):
    """A tenant (brand) was created."""

    model_config = ConfigDict(extra="forbid")

    tenant_id: uuid.UUID
    slug: str = Field(description="The tenant's slug in URLs and commands.")
    timezone: str = Field(description="IANA name; tenant-local days and periods use it.")


PLATFORM_EVENTS = [
    EventType(
        name="tenant.created",
        direction="domain",
        service="platform",
        description="A tenant was created (`scrm tenant create`, `POST /v1/admin/tenants`).",
        model=TenantCreated,
        example={
            "tenant_id": "0b7f7d8e-3c1a-4c55-9a51-2f1f9c0d6a10",
            "slug": "acme",
            "timezone": "Asia/Shanghai",
        },
    ),
]

_CATALOG: EventCatalog | None = None


def catalog() -> EventCatalog:
    """The platform's types and those of every service's `events.py` (`EVENTS`)."""
    global _CATALOG
    if _CATALOG is None:
        declared = list(PLATFORM_EVENTS)
        for service in SERVICES:
            module = importlib.import_module(f"services.{service}.events")
            declared.extend(module.EVENTS)
        _CATALOG = EventCatalog(declared)
    return _CATALOG


# -- OpenAPI --------------------------------------------------------------------------------

INBOUND_EVENT_SCHEMA = "InboundEvent"


def _variant_name(declared: EventType) -> str:
    return f"InboundEvent.{declared.name.replace('*', 'any')}"


def openapi_schemas() -> dict[str, Any]:
    """Component schemas: each type's model, and for `POST /v1/events` one event of each
    inbound type (`InboundEvent.<type>`) and their union (`InboundEvent`)."""
    from services.users.schemas import EventIn

    types = list(catalog())
    models: list[type[BaseModel]] = [EventIn]
    for declared in types:
        if declared.model not in models:
            models.append(declared.model)
    refs, definitions = models_json_schema(
        [(model, "validation") for model in models], ref_template=REF_TEMPLATE
    )
    schemas: dict[str, Any] = dict(definitions.get("$defs", {}))
    for declared in types:
        ref = refs[(declared.model, "validation")]["$ref"]
        schema = schemas[ref.rsplit("/", 1)[1]]
        schema.setdefault("description", declared.description)
        schema.setdefault("examples", [dict(declared.example)])
    event_ref = refs[(EventIn, "validation")]
    variants = []
    for declared in (t for t in types if t.direction == "inbound" and t.via == "events"):
        name = _variant_name(declared)
        type_schema: dict[str, Any] = (
            {"type": "string", "pattern": r"^custom\.[a-z0-9_]+(\.[a-z0-9_]+)*$"}
            if declared.name == "custom.*"
            else {"const": declared.name}
        )
        schemas[name] = {
            "title": declared.name,
            "description": declared.description,
            "allOf": [event_ref],
            "properties": {
                "type": type_schema,
                "properties": refs[(declared.model, "validation")],
            },
        }
        variants.append({"$ref": REF_TEMPLATE.format(model=name)})
    schemas[INBOUND_EVENT_SCHEMA] = {
        "title": "InboundEvent",
        "description": "One event an integration sends, of one of the inbound types.",
        "oneOf": variants,
    }
    return schemas


def events_request_body(max_batch: int) -> dict[str, Any]:
    """The request body of `POST /v1/events` and the webhooks, for `openapi_extra`."""
    event = {"$ref": REF_TEMPLATE.format(model=INBOUND_EVENT_SCHEMA)}
    batch = {"type": "array", "items": event, "minItems": 1, "maxItems": max_batch}
    example = next(iter(catalog().inbound("events")))
    return {
        "required": True,
        "description": f"One event, an array of up to {max_batch}, or "
        f'`{{"events": [...]}}`. Each is validated on its own: invalid ones come back '
        "in `rejected` with their index, the valid ones are kept.",
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        event,
                        batch,
                        {
                            "type": "object",
                            "properties": {"events": batch},
                            "required": ["events"],
                            "additionalProperties": False,
                        },
                    ]
                },
                "example": {
                    "event_id": "shop-7f3a2c",
                    "type": example.name,
                    "occurred_at": "2026-11-20T10:31:00+08:00",
                    "contact": {"phone": "+8613800138000"},
                    "properties": dict(example.example),
                },
            }
        },
    }


# -- README ---------------------------------------------------------------------------------


def _property_list(model: type[BaseModel]) -> str:
    schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    required = set(schema.get("required", ()))
    parts = []
    for name, prop in schema.get("properties", {}).items():
        kind = _kind(prop)
        parts.append(f"`{name}`{'' if name in required else '?'} {kind}")
    if schema.get("additionalProperties") not in (None, False) or not parts:
        parts.append("any other, as sent" if parts else "free-form")
    return ", ".join(parts)


def _kind(prop: Mapping[str, Any]) -> str:
    if "anyOf" in prop:
        kinds = [_kind(p) for p in prop["anyOf"] if p.get("type") != "null"]
        nullable = len(kinds) < len(prop["anyOf"]) and "default" not in prop
        return " or ".join(kinds) + (" or null" if nullable else "")
    if "const" in prop:
        return json.dumps(prop["const"])
    if "enum" in prop:
        return "|".join(str(v) for v in prop["enum"])
    if "$ref" in prop:
        return "object"
    kind = str(prop.get("type", "any"))
    if prop.get("format") in ("uuid", "date-time", "date"):
        kind = str(prop["format"])
    if kind == "array" and "items" in prop:
        kind = f"array of {_kind(prop['items'])}"
    return kind


def _consumers(name: str) -> str:
    from shared.events import load_subscriptions

    registry = load_subscriptions()
    handlers = sorted(
        sub.name
        for sub in registry.all()
        if name in sub.event_types and sub.handler.__module__.startswith(("services.", "shared."))
    )
    return ", ".join(f"`{h}`" for h in handlers) or "none yet"


def markdown() -> str:
    """README's tables of the catalog (inbound, then domain)."""
    found = catalog()
    lines = [
        "Inbound: what integrations send (`POST /v1/events`, webhooks) and the WeCom",
        "callbacks the users service applies. Properties marked `?` are optional.",
        "",
        "| type | via | properties | example | description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for declared in found.inbound():
        lines.append(_row(declared, declared.via))
    lines += [
        "",
        "Domain: what the services publish on the bus, and who consumes it.",
        "",
        "| type | published by | payload | example | consumed by | description |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for declared in found.domain():
        lines.append(_row(declared, declared.service, _consumers(declared.name)))
    return "\n".join(lines) + "\n"


def _row(declared: EventType, *columns: str) -> str:
    example = json.dumps(dict(declared.example), ensure_ascii=False, separators=(", ", ": "))
    cells = [
        f"`{declared.name}`",
        columns[0],
        _property_list(declared.model),
        f"`{example}`",
        *columns[1:],
        declared.description,
    ]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def main(argv: list[str] | None = None) -> None:
    """`python -m shared.catalog [--markdown]`: the catalog as JSON, or README's tables."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m shared.catalog", description=__doc__)
    parser.add_argument("--markdown", action="store_true", help="README's tables")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(), end="")
        return
    entries = [
        {
            "type": t.name,
            "direction": t.direction,
            "via": t.via,
            "service": t.service,
            "description": t.description,
            "schema": t.model.model_json_schema(by_alias=True),
            "example": dict(t.example),
        }
        for t in catalog()
    ]
    print(json.dumps(entries, indent=2, ensure_ascii=False, default=str))


if __name__ == "__main__":
    main()
