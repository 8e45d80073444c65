"""Turn an ingest record's bytes into JSON values within the input `Limits` (pure).

Limits are checked before parsing (size) and right after (depth, string length, NUL
characters), on the whole submission: a payload over a limit is refused whole, never truncated,
so a publisher cannot get half a bundle through by accident.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain, compress
from typing import Any

import orjson
from pydantic import BaseModel, Field

from schemas.envelope import Reason


@dataclass(frozen=True, slots=True)
class PayloadProblem:
    reason: Reason
    pointer: str
    message: str


class InputLimits(BaseModel):
    """Input limits at ingest; above any of them a submission is rejected, never truncated."""

    message_bytes: int = Field(default=4 * 1024 * 1024, description="Max bytes per ingest record")
    objects_per_bundle: int = Field(default=10_000, description="Max objects in one bundle")
    string_chars: int = Field(default=64 * 1024, description="Max characters in any JSON string")
    nesting_depth: int = Field(default=32, description="Max JSON nesting depth")


def json_pointer(*parts: str | int) -> str:
    """RFC 6901 pointer from path parts ('~' and '/' escaped in names)."""
    return "".join(
        "/" + (str(p) if isinstance(p, int) else p.replace("~", "~0").replace("/", "~1"))
        for p in parts
    )


def decode_payload(raw: bytes, limits: InputLimits) -> Any | PayloadProblem:
    """The parsed JSON value, or the first problem that makes the whole payload unacceptable."""
    if len(raw) > limits.message_bytes:
        return PayloadProblem(
            Reason.TOO_LARGE,
            "",
            f"the submission is {len(raw)} bytes, over the {limits.message_bytes}-byte limit: "
            "split it into several bundles",
        )
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _classify_decode_error(raw, exc, limits)
    problem = _check_shape_quickly(document, raw, limits)
    return problem if problem is not None else document


def _duplicate_key(raw: bytes) -> PayloadProblem | None:
    """The first object (in document order) that repeats a key, found by a second, exact parse
    (the standard library's, which reports every pair); None when no key repeats."""
    import json

    found: list[tuple[str, int]] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen and not found:
                found.append((key, len(items)))
            seen.add(key)
        return dict(items)

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return None  # orjson parsed it: a disagreement here is no duplicate to report
    if not found:
        return None
    key = found[0][0]
    return PayloadProblem(
        Reason.DUPLICATE_KEY,
        "",
        f"the JSON repeats the key {key!r} within one object: JSON parsers disagree on which "
        "value wins (this one kept the last), so the bus refuses it; send each key once",
    )


def _classify_decode_error(
    raw: bytes, exc: orjson.JSONDecodeError, limits: InputLimits
) -> PayloadProblem:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as utf8_error:
        return PayloadProblem(
            Reason.INVALID_UTF8,
            "",
            f"the submission is not valid UTF-8 (byte {utf8_error.start}): STIX JSON must be "
            "UTF-8 encoded",
        )
    if "depth limit" in str(exc).lower() or "recursion" in str(exc).lower():
        return PayloadProblem(
            Reason.TOO_DEEP,
            "",
            f"the JSON nests deeper than the {limits.nesting_depth}-level limit: flatten it",
        )
    return PayloadProblem(
        Reason.INVALID_JSON,
        "",
        f"the submission is not valid JSON ({exc}): send one STIX bundle or object as JSON",
    )


_CONTAINER_TYPE = frozenset({dict, list}).__contains__
_STRING_TYPE = frozenset({str}).__contains__


def _check_shape_quickly(document: Any, raw: bytes, limits: InputLimits) -> PayloadProblem | None:
    """What `_check_shape_limits` returns, faster on valid payloads.

    Goes down one nesting level at a time with the per-value work in C (itertools, map): depth,
    string and key lengths.  NUL characters are ruled out on the raw bytes: inside a JSON string
    a NUL can only be written `\\u0000` (a raw control byte is invalid JSON, which orjson
    refuses).  On any doubt, or a problem, it runs `_check_shape_limits`, so the problem reported
    (and its pointer) is the one the full walk names."""
    if b"\\u0000" in raw or not _CONTAINER_TYPE(type(document)):
        return _check_shape_limits(document, limits) or _duplicate_key(raw)
    max_chars = limits.string_chars
    check_strings = len(raw) > max_chars  # a string has at least one byte a character
    # Duplicate keys, counted: outside strings a ':' only follows a key, so the raw bytes have
    # one ':' per key written plus the ':'s inside strings, which the parsed strings still hold
    # (unless escaped as \u003a: then the exact check decides).  The parse keeps one key per
    # name, so fewer keys parsed than written means a key was repeated.
    parsed_keys = 0
    string_colons = 0
    level = [document]
    depth = 1
    while level:
        if depth > limits.nesting_depth:
            return _check_shape_limits(document, limits)
        objects = [c for c in level if type(c) is dict]
        parsed_keys += sum(map(len, objects))
        keys = list(chain.from_iterable(objects))
        string_colons += "".join(keys).count(":")
        if check_strings and max(map(len, keys), default=0) > max_chars:
            return _check_shape_limits(document, limits)
        items = list(chain.from_iterable([c.values() if type(c) is dict else c for c in level]))
        types = list(map(type, items))
        strings = list(compress(items, map(_STRING_TYPE, types)))
        string_colons += "".join(strings).count(":")
        if check_strings and max(map(len, strings), default=0) > max_chars:
            return _check_shape_limits(document, limits)
        level = list(compress(items, map(_CONTAINER_TYPE, types)))
        depth += 1
    if raw.count(b":") - string_colons != parsed_keys or b"\\u003" in raw:
        return _duplicate_key(raw)
    return None


def _check_shape_limits(document: Any, limits: InputLimits) -> PayloadProblem | None:
    """Walk the value once, iteratively (a deep document must not blow the Python stack).

    The walk carries no paths: they are only rebuilt, by `_path_to`, for the rare offender."""
    max_depth, max_chars = limits.nesting_depth, limits.string_chars
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            items: Iterable[Any] = value.values()
            keys: Iterable[Any] = value.keys()
        elif isinstance(value, list):
            items, keys = value, ()
        else:
            if isinstance(value, str) and (len(value) > max_chars or "\x00" in value):
                return _string_problem(document, value, max_chars)
            continue
        if depth > max_depth:
            return _too_deep(_path_to(document, value), max_depth)
        for key in keys:
            if len(key) > max_chars or "\x00" in key:
                return _string_problem(document, key, max_chars)
        for item in items:
            if isinstance(item, str):
                if len(item) > max_chars or "\x00" in item:
                    return _string_problem(document, item, max_chars)
            elif isinstance(item, dict | list):
                stack.append((item, depth + 1))
    return None


def _path_to(document: Any, target: Any) -> tuple[str | int, ...]:
    """Path of the first node that is `target` (by identity, or a key equal to it)."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(document, ())]
    while stack:
        value, path = stack.pop()
        if value is target:
            return path
        if isinstance(value, dict):
            for key, item in value.items():
                if key is target or (key == target and isinstance(target, str)):
                    return (*path, key)
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, index)) for index, item in enumerate(value))
    return ()


def _string_problem(document: Any, text: str, max_chars: int) -> PayloadProblem | None:
    return _check_string(text, _path_to(document, text), max_chars)


def _too_deep(path: tuple[str | int, ...], max_depth: int) -> PayloadProblem:
    return PayloadProblem(
        Reason.TOO_DEEP,
        json_pointer(*path),
        f"the JSON nests deeper than the {max_depth}-level limit at {json_pointer(*path) or '/'}: "
        "flatten it",
    )


def _check_string(text: str, path: tuple[str | int, ...], max_chars: int) -> PayloadProblem | None:
    if len(text) > max_chars:
        return PayloadProblem(
            Reason.STRING_TOO_LONG,
            json_pointer(*path),
            f"a string of {len(text)} characters at {json_pointer(*path) or '/'} is over the "
            f"{max_chars}-character limit: shorten it or send the content elsewhere",
        )
    if "\x00" in text:
        return PayloadProblem(
            Reason.NUL_CHARACTER,
            json_pointer(*path),
            f"the string at {json_pointer(*path) or '/'} contains a NUL character (\\u0000), "
            "which STIX consumers mishandle: remove it",
        )
    return None
