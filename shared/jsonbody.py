"""The one JSON loader of request bodies: strict JSON the database can store.

Every JSON body, whether a FastAPI route or a front door reads it, goes
through `loads` (or `parse` plus `text_problems`, where a batch rejects its
items one by one):

- not UTF-8, not JSON, `NaN`/`Infinity` or a number too large for a float:
  400 `malformed_json` (PostgreSQL's jsonb refuses the non-finite ones);
- nested deeper than MAX_JSON_DEPTH: 400 `malformed_json`, decided before
  parsing, so a deep document never reaches Python's recursion limit;
- a string, key or value, at any depth, that PostgreSQL cannot store as text
  (U+0000, an unpaired surrogate): 422 `validation_error` naming its location.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from itertools import accumulate
from typing import Any

from shared.errors import InvalidInput, ScrmError

MAX_JSON_DEPTH = 64

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NESTING = re.compile(r"[\[\]{}]")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
# Escapes that decode to text PostgreSQL refuses; raw ones cannot occur in valid UTF-8 JSON.
_UNSTORABLE_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

Location = Sequence[str | int]


class MalformedJson(ScrmError):
    code = "malformed_json"


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"number {literal[:40]} is too large")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def depth(text: str) -> int:
    """How deeply arrays and objects nest in a JSON text (0 for a scalar)."""
    structure = _NESTING.findall(_STRING.sub("", text))
    return max(accumulate(_STEP[c] for c in structure), default=0)


def parse(body: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON document, or MalformedJson (400). Strings are not checked: see loads."""
    try:
        text = body.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise MalformedJson("request body is not UTF-8 encoded JSON") from None
    # Nesting can be no deeper than the number of brackets: most documents stop here.
    if text.count("[") + text.count("{") > max_depth and depth(text) > max_depth:
        raise MalformedJson(
            f"request body nests arrays and objects deeper than {max_depth} levels",
            details={"max_depth": max_depth},
        )
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise MalformedJson("request body is not valid JSON", details=str(exc)[:200]) from None


def may_hold_unstorable_text(body: bytes) -> bool:
    """False when no string of the UTF-8 JSON `body` can hold U+0000 or a lone surrogate."""
    return _UNSTORABLE_ESCAPE.search(body) is not None


def _fault(text: str) -> str | None:
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "text must not contain the NUL character (U+0000)"
    return "text must not contain an unpaired surrogate (invalid Unicode)"


def _shown(key: str) -> str:
    return key.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\u0000")


def _problem(where: tuple[str | int, ...], message: str) -> dict[str, Any]:
    return {"loc": [str(part) for part in where], "message": message, "type": "text_unstorable"}


def text_problems(document: Any, loc: Location = ()) -> list[dict[str, Any]]:
    """Every string of `document` (keys included) PostgreSQL cannot store, as
    validation details {"loc", "message", "type"} under `loc`."""
    problems: list[dict[str, Any]] = []
    pending: list[tuple[Any, tuple[str | int, ...]]] = [(document, tuple(loc))]
    while pending:
        node, where = pending.pop()
        if isinstance(node, str):
            fault = _fault(node)
            if fault:
                problems.append(_problem(where, fault))
        elif isinstance(node, dict):
            for key, value in node.items():
                fault = _fault(key)
                if fault:
                    problems.append(_problem((*where, _shown(key)), f"object key: {fault}"))
                pending.append((value, (*where, _shown(key))))
        elif isinstance(node, list):
            pending.extend((item, (*where, n)) for n, item in enumerate(node))
    return sorted(problems, key=lambda p: list(p["loc"]))


def loads(body: bytes, *, loc: Location = ("body",)) -> Any:
    """`parse`, then refuse (422) any string the database cannot store."""
    document = parse(body)
    if may_hold_unstorable_text(body):
        problems = text_problems(document, loc)
        if problems:
            raise InvalidInput("request body holds text that cannot be stored", details=problems)
    return document
