"""Turn an ingest record's bytes into JSON values within the input `Limits` (pure).

Limits are checked before parsing (size) and right after (depth, string length, NUL
characters), on the whole submission: a payload over a limit is refused whole, never truncated,
so a publisher cannot get half a bundle through by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from schemas.envelope import Reason
from stixbus.settings import Limits


@dataclass(frozen=True, slots=True)
class PayloadProblem:
    reason: Reason
    pointer: str
    message: str


def json_pointer(*parts: str | int) -> str:
    """RFC 6901 pointer from path parts ('~' and '/' escaped in names)."""
    return "".join(
        "/" + (str(p) if isinstance(p, int) else p.replace("~", "~0").replace("/", "~1"))
        for p in parts
    )


def decode_payload(raw: bytes, limits: Limits) -> Any | PayloadProblem:
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
    problem = _check_shape_limits(document, limits)
    return problem if problem is not None else document


def _classify_decode_error(raw: bytes, exc: orjson.JSONDecodeError, limits: Limits) -> PayloadProblem:
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


def _check_shape_limits(document: Any, limits: Limits) -> PayloadProblem | None:
    """Walk the value once (iteratively: a deep document must not blow the Python stack)."""
    max_depth, max_chars = limits.nesting_depth, limits.string_chars
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(document, 1, ())]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, dict):
            if depth > max_depth:
                return _too_deep(path, max_depth)
            for key, item in value.items():
                problem = _check_string(key, (*path, key), max_chars)
                if problem is not None:
                    return problem
                if isinstance(item, str):
                    problem = _check_string(item, (*path, key), max_chars)
                    if problem is not None:
                        return problem
                elif isinstance(item, dict | list):
                    stack.append((item, depth + 1, (*path, key)))
        elif isinstance(value, list):
            if depth > max_depth:
                return _too_deep(path, max_depth)
            for index, item in enumerate(value):
                if isinstance(item, str):
                    problem = _check_string(item, (*path, index), max_chars)
                    if problem is not None:
                        return problem
                elif isinstance(item, dict | list):
                    stack.append((item, depth + 1, (*path, index)))
        elif isinstance(value, str):
            return _check_string(value, path, max_chars)
    return None


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
