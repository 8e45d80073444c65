"""STIX 2.1 patterns: a fast parser for the shapes indicators actually use, with a cached
fallback to the official grammar (`stix2patterns`, via the OASIS validator's pattern check).

The fast parser understands one observation of `=` comparisons joined by AND/OR on the routed
observables (`[url:value = '...' OR domain-name:value = '...']`, `file:hashes.'SHA-256'`, ...).
It is strictly a subset of the official grammar: whatever it does not recognise goes to the
official checker, so it can never accept a pattern the OASIS tools reject (the differential
tests hold it to that).  It also checks the values themselves (an IPv4 pattern must name an IPv4
address), which the official grammar does not.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

from stixbus.core.canonical import (
    HASH_HEX_LENGTHS,
    Canonical,
    CanonicalError,
    canonical_domain,
    canonical_email,
    canonical_ip,
    canonical_observable,
    canonical_url,
)


class PatternError(ValueError):
    """The pattern is not valid; the message says which rule it broke and what to do."""


class PatternTooComplex(PatternError):
    """The pattern may be valid but nests too deeply or is too long for the bus to check."""


class OfficialGrammarDeferred(Exception):
    """`parse_pattern(..., official=False)` needs the official grammar: the caller runs the
    check elsewhere (off the event loop, agents/validation_pool.py) and asks again there."""


# Bounds on what goes to the official grammar (its ANTLR parser recurses once a bracket level
# and a comparison, and takes seconds for thousands of comparisons): a pattern past them is
# rejected with advice rather than parsed.  Both are far above what real indicators use.
MAX_PATTERN_NESTING = 100
MAX_PATTERN_COMPARISONS = 2000


class ParsedPattern(NamedTuple):  # a NamedTuple: built per pattern on the hot path, cheaper
    canonical: str
    observable_types: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    fast: bool = True


_FAST_OBJECT_PATHS = frozenset(
    {
        ("url", "value"),
        ("domain-name", "value"),
        ("ipv4-addr", "value"),
        ("ipv6-addr", "value"),
        ("email-addr", "value"),
        ("file", "name"),
    }
)
_HASH_NAMES = frozenset(HASH_HEX_LENGTHS) | {"SSDEEP", "TLSH"}
# `canonical_observable` for the fast paths, looked up once (same functions, no dispatch chain).
_VALUE_CANONICALISERS: dict[tuple[str, str], Callable[[str], Canonical]] = {
    ("domain-name", "value"): canonical_domain,
    ("url", "value"): canonical_url,
    ("ipv4-addr", "value"): lambda value: canonical_ip(value, 4),
    ("ipv6-addr", "value"): lambda value: canonical_ip(value, 6),
    ("email-addr", "value"): canonical_email,
    ("file", "name"): Canonical,
}
assert set(_VALUE_CANONICALISERS) == _FAST_OBJECT_PATHS

# One comparison: object-type ':' property-path '=' 'string'.  The string literal follows the
# grammar exactly: any character but quote/backslash, or the escapes \' and \\.
_COMPARISON_TEXT = r"""[ \t\r\n]*
    (?P<type>[a-z0-9]+(?:-[a-z0-9]+)*)
    :
    (?:(?P<prop>value|name)|hashes\.(?:'(?P<qhash>[A-Za-z0-9-]+)'|(?P<hash>[A-Za-z][A-Za-z0-9]*)))
    [ \t\r\n]*=[ \t\r\n]*
    '(?P<value>[^'\\]*(?:\\['\\][^'\\]*)*)'
    [ \t\r\n]*"""
_COMPARISON = re.compile(_COMPARISON_TEXT, re.VERBOSE)
# The commonest shape, a whole pattern of exactly one comparison, matched in one go (with
# `fullmatch`).  The parse is unambiguous (a literal ends at its first unescaped quote), so this
# accepts exactly the one-comparison patterns that the general loop below accepts.
_SINGLE_COMPARISON = re.compile(r"[ \t\r\n]*\[" + _COMPARISON_TEXT + r"\][ \t\r\n]*", re.VERBOSE)
_JOIN = re.compile(r"(AND|OR)(?=[ \t\r\n])")
_UNESCAPE = re.compile(r"\\(['\\])")


def _quote(value: str) -> str:
    if "'" in value or "\\" in value:
        value = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{value}'"


def _comparison(match: re.Match[str]) -> tuple[str, str, tuple[str, ...]] | None:
    """(canonical comparison text, object type, warnings) of one matched comparison; None when
    it names a path outside the fast subset; PatternError when its value is impossible."""
    object_type, prop, value = match.group("type", "prop", "value")
    if prop is not None:
        canonicalise = _VALUE_CANONICALISERS.get((object_type, prop))
        if canonicalise is None:
            return None
        if "\\" in value:
            value = _UNESCAPE.sub(r"\1", value)
        try:
            canonical = canonicalise(value)
        except CanonicalError as exc:
            raise PatternError(f"{object_type}:{prop}: {exc}") from None
        return f"{object_type}:{prop} = {_quote(canonical.value)}", object_type, canonical.warnings
    else:
        hash_name = match.group("qhash") or match.group("hash")
        if object_type != "file" or hash_name not in _HASH_NAMES:
            return None
        property_path: tuple[str, ...] = ("hashes", hash_name)
        path_text = f"hashes.{_quote(hash_name)}"
    if "\\" in value:
        value = _UNESCAPE.sub(r"\1", value)
    try:
        canonical = canonical_observable(object_type, property_path, value)
    except CanonicalError as exc:
        raise PatternError(f"{object_type}:{'.'.join(property_path)}: {exc}") from None
    return (
        f"{object_type}:{path_text} = {_quote(canonical.value)}",
        object_type,
        canonical.warnings,
    )


def _fast_parse(pattern: str) -> ParsedPattern | None:
    """Parse the common subset; None when the pattern is outside it (not necessarily invalid).

    Raises PatternError only for patterns that are inside the subset syntactically but name an
    impossible observable value (a malformed IP, hash, domain or URL).
    """
    single = _SINGLE_COMPARISON.fullmatch(pattern)
    if single is not None:
        object_type, prop, value = single.group("type", "prop", "value")
        canonicalise = None if prop is None else _VALUE_CANONICALISERS.get((object_type, prop))
        if canonicalise is not None:  # `_comparison`, inline for the commonest patterns
            if "\\" in value:
                value = _UNESCAPE.sub(r"\1", value)
            try:
                canonical = canonicalise(value)
            except CanonicalError as exc:
                raise PatternError(f"{object_type}:{prop}: {exc}") from None
            return ParsedPattern(
                f"[{object_type}:{prop} = {_quote(canonical.value)}]",
                (object_type,),
                tuple(dict.fromkeys(canonical.warnings)) if canonical.warnings else (),
            )
        comparison = _comparison(single)
        if comparison is None:
            return None
        term, object_type, warnings = comparison
        return ParsedPattern(
            f"[{term}]", (object_type,), tuple(dict.fromkeys(warnings)) if warnings else ()
        )
    text = pattern.strip(" \t\r\n")
    if len(text) < 2 or text[0] != "[" or text[-1] != "]":
        return None
    position, end = 1, len(text) - 1
    terms: list[list[str]] = [[]]
    types: set[str] = set()
    all_warnings: list[str] = []
    while True:
        match = _COMPARISON.match(text, position, end)
        if match is None:
            return None
        comparison = _comparison(match)
        if comparison is None:
            return None
        term, object_type, warnings = comparison
        all_warnings.extend(warnings)
        types.add(object_type)
        terms[-1].append(term)
        position = match.end()
        if position == end:
            break
        join = _JOIN.match(text, position, end)
        if join is None:
            return None
        if join.group(1) == "OR":
            terms.append([])
        position = join.end()
    # AND binds tighter than OR: the observation is an OR of AND-terms; both are commutative and
    # idempotent, so sorting and de-duplicating gives one text per meaning.
    canonical_terms = sorted({" AND ".join(sorted(set(term))) for term in terms})
    return ParsedPattern(
        canonical="[" + " OR ".join(canonical_terms) + "]",
        observable_types=tuple(sorted(types)),
        warnings=tuple(dict.fromkeys(all_warnings)),
    )


@lru_cache(maxsize=8192)
def _official_check(pattern: str, pattern_version: str) -> ParsedPattern | str:
    """The OASIS validator's own pattern check (stix2patterns grammar plus its object type and
    property name rules).  Returns the parsed pattern or the error text.  Cached: the ANTLR
    parser costs ~0.5 ms a pattern and feeds repeat the same patterns."""
    from stix2patterns.v21.pattern import Pattern
    from stix2validator import ValidationOptions
    from stix2validator.v21.musts import patterns as validator_pattern_check

    instance = {
        "type": "indicator",
        "id": "indicator--00000000-0000-4000-8000-000000000000",
        "pattern_type": "stix",
        "pattern": pattern,
        "pattern_version": pattern_version,
    }
    try:
        errors = [str(e) for e in validator_pattern_check(instance, ValidationOptions())]
    except RecursionError:
        return _TOO_DEEP_FOR_THIS_PROCESS
    except Exception as exc:  # the ANTLR runtime can raise on pathological input
        return f"the pattern grammar could not parse it ({type(exc).__name__})"
    if errors:
        return "; ".join(e.split(": ", 1)[-1] for e in errors)
    try:
        types = (
            tuple(sorted(Pattern(pattern).inspect().comparisons))
            if pattern_version == "2.1"
            else ()
        )
    except RecursionError:
        return _TOO_DEEP_FOR_THIS_PROCESS
    except Exception:
        types = ()
    return ParsedPattern(canonical=pattern.strip(), observable_types=types, fast=False)


_TOO_DEEP_FOR_THIS_PROCESS = "\x00too deep"  # a sentinel: no error text starts with NUL


_BRACKET_PAIRS = {"]": "[", ")": "("}


def _unbalanced(pattern: str) -> tuple[str | None, int, int]:
    """(why the pattern cannot be valid lexically, or None; deepest bracket nesting; number of
    comparisons).  Sound for both grammar versions: brackets only appear unbalanced inside
    quoted literals, which this scan skips, and outside them a ':' only separates a
    comparison's object type from its property.  Saves the ANTLR parser (~3 ms) on broken
    input, and bounds what reaches it."""
    open_brackets: list[str] = []
    in_quote = False
    deepest = comparisons = 0
    position, length = 0, len(pattern)
    while position < length:
        char = pattern[position]
        if in_quote:
            if char == "\\":
                position += 1  # an escape: skip the escaped character
            elif char == "'":
                in_quote = False
        elif char == "'":
            in_quote = True
        elif char in "[(":
            open_brackets.append(char)
            deepest = max(deepest, len(open_brackets))
        elif char in "])" and (not open_brackets or open_brackets.pop() != _BRACKET_PAIRS[char]):
            return f"'{char}' at position {position} closes nothing", deepest, comparisons
        elif char == ":":
            comparisons += 1
        position += 1
    if in_quote:
        return "a quoted string is not terminated", deepest, comparisons
    if open_brackets:
        return f"'{open_brackets[-1]}' is never closed", deepest, comparisons
    return None, deepest, comparisons


def _too_complex(pattern: str, detail: str) -> PatternTooComplex:
    return PatternTooComplex(
        f"STIX pattern {pattern[:200]!r} is too complex for the bus to check: {detail}. Split "
        f"it into several indicators (at most {MAX_PATTERN_COMPARISONS} comparisons and "
        f"{MAX_PATTERN_NESTING} levels of brackets each), e.g. one indicator per observation"
    )


def parse_pattern(
    pattern: str, pattern_version: str = "2.1", *, official: bool = True
) -> ParsedPattern:
    """Validate a STIX pattern and give its canonical form; raises PatternError when invalid
    (PatternTooComplex when it is past the bounds above or the grammar's recursion).

    `official=False`: raise OfficialGrammarDeferred instead of running the official grammar
    (milliseconds to seconds of CPU) when the fast parser cannot decide."""
    if pattern_version == "2.1":
        parsed = _fast_parse(pattern)
        if parsed is not None:
            return parsed
    lexical_problem, nesting, comparisons = _unbalanced(pattern)
    if lexical_problem is None:
        if nesting > MAX_PATTERN_NESTING:
            raise _too_complex(pattern, f"it nests brackets {nesting} levels deep")
        if comparisons > MAX_PATTERN_COMPARISONS:
            raise _too_complex(pattern, f"it has {comparisons} comparisons")
        if not official:
            raise OfficialGrammarDeferred(pattern)
    result = lexical_problem or _official_check(pattern, pattern_version)
    if result == _TOO_DEEP_FOR_THIS_PROCESS:
        raise _too_complex(pattern, "the pattern grammar ran out of recursion depth on it")
    if isinstance(result, str):
        raise PatternError(
            f"STIX pattern {pattern[:200]!r} is not valid: {result}. Write it as e.g. "
            "[url:value = 'https://example.org/x'] (see STIX 2.1 §9)"
        )
    return result


def _read_comparison(match: re.Match[str]) -> tuple[str, tuple[str, ...], str]:
    """(object type, property path, unescaped value) of one `_COMPARISON` match: the one reader
    of comparisons for `pattern_observables` (the guard) and `pattern_terms` (the sinks)."""
    object_type, prop, value = match.group("type", "prop", "value")
    if "\\" in value:
        value = _UNESCAPE.sub(r"\1", value)
    if prop is None:
        return object_type, ("hashes", match.group("qhash") or match.group("hash")), value
    return object_type, (prop,), value


def pattern_observables(pattern: str) -> tuple[tuple[str, str], ...]:
    """(object type, canonical value) of every `value`/`name`/hash comparison in a pattern.

    For the false-positive guard (stixbus/core/guard.py): it reads canonical patterns, but a
    pattern outside the fast subset is scanned too (its values canonicalised here, those that
    cannot be are skipped).  Over-reporting errs on the safe side: a hit only withholds."""
    found: list[tuple[str, str]] = []
    for match in _COMPARISON.finditer(pattern):
        object_type, path, value = _read_comparison(match)
        try:
            canonical = canonical_observable(object_type, path, value)
        except CanonicalError:
            continue
        found.append((object_type, canonical.value))
    return tuple(found)


class Comparison(NamedTuple):
    """One `object:path = 'value'` comparison of a canonical pattern; `value` is canonical."""

    object_type: str
    path: str  # "value", "name" or "hashes.<ALGORITHM>"
    value: str


def pattern_terms(pattern: str, pattern_version: str = "2.1") -> tuple[tuple[Comparison, ...], ...]:
    """The observation of a pattern in the fast subset as an OR of AND-terms of canonical
    comparisons (the same canonicaliser as dedup); () for a valid pattern outside the subset
    (qualifiers, several observations, other operators: nothing a block list can hold).

    Raises PatternError when the pattern is invalid."""
    parsed = parse_pattern(pattern, pattern_version)
    if not parsed.fast:
        return ()
    text = parsed.canonical
    position, end = 1, len(text) - 1
    terms: list[list[Comparison]] = [[]]
    while position < end:
        match = _COMPARISON.match(text, position, end)
        if match is None:  # cannot happen for a canonical text; stay total anyway
            return ()
        object_type, path, value = _read_comparison(match)
        terms[-1].append(Comparison(object_type, ".".join(path), value))
        position = match.end()
        join = _JOIN.match(text, position, end)
        if join is None:
            break
        if join.group(1) == "OR":
            terms.append([])
        position = join.end()
    return tuple(tuple(term) for term in terms if term)
