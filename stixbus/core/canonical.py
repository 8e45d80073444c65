"""Canonical forms of observable values, deterministic SCO ids and the bus dedup key (pure).

Two producers who mean the same observable must end up with the same canonical text, whatever
their casing, defanging or encoding habits: the dedup stage groups indicators on the UUIDv5 of
the canonical pattern.  The canonical form is the bus's own; a producer's object is never
rewritten with it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
import uuid
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

import idna
import orjson

from stixbus.core.ids import uuid5

# STIX 2.1 §2.9: the namespace for deterministic SCO ids.  Used for SCO ids only, never for the
# dedup key (which lives in the bus's own namespace so it cannot collide with a STIX id).
SCO_NAMESPACE = uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7")

# ID contributing properties per SCO type (STIX 2.1 §6), for the routed SCO types.
SCO_ID_CONTRIBUTING_PROPERTIES: dict[str, tuple[str, ...]] = {
    "ipv4-addr": ("value",),
    "ipv6-addr": ("value",),
    "domain-name": ("value",),
    "url": ("value",),
    "email-addr": ("value",),
    "file": ("hashes", "name", "extensions", "parent_directory_ref"),
}

HASH_HEX_LENGTHS: dict[str, int] = {
    "MD5": 32,
    "SHA-1": 40,
    "SHA-256": 64,
    "SHA-512": 128,
    "SHA3-256": 64,
    "SHA3-512": 128,
}


class CanonicalError(ValueError):
    """An observable value that cannot be an observable of its type (message says what to fix)."""


class Canonical(NamedTuple):  # a NamedTuple: built per value on the hot path, cheaper
    value: str
    warnings: tuple[str, ...] = ()


# --- refanging ---------------------------------------------------------------------------------
# Defanging conventions seen in CERT, MISP and vendor feeds.  Ordered: longer tokens first so
# "[://]" is not half-replaced by "[:]".
_REFANG_TOKENS: tuple[tuple[str, str], ...] = (
    ("[://]", "://"),
    ("[:]", ":"),
    ("[.]", "."),
    ("(.)", "."),
    ("{.}", "."),
    ("[dot]", "."),
    ("(dot)", "."),
    ("{dot}", "."),
    (" dot ", "."),
    ("[@]", "@"),
    ("(@)", "@"),
    ("[at]", "@"),
    ("(at)", "@"),
    (" at ", "@"),
    ("[/]", "/"),
)
_REFANG_SCHEMES = re.compile(r"^(?:hxxps?|hXXps?|h\*\*ps?|fxps?|fxp|meow)(?=\[?:)", re.IGNORECASE)
_SCHEME_FOR_DEFANGED = {
    "hxxp": "http",
    "hxxps": "https",
    "h**p": "http",
    "h**ps": "https",
    "fxp": "ftp",
    "fxps": "ftps",
    "meow": "http",
}
_DEFANG_HINT = re.compile(r"\[|\]|\(|\)|\{|\}|hxx|h\*\*|fxp|meow| dot | at ", re.IGNORECASE)


_REFANG_TOKENS_BOTH_CASES = tuple(
    (token, token.upper(), replacement) for token, replacement in _REFANG_TOKENS
)
_BRACKET = re.compile(r"[\[\](){}]")


def _looks_defanged(text: str) -> bool:
    """`_DEFANG_HINT.search(text)`, faster: a case-insensitive regex alternation is slow, and for
    ASCII text lower-casing and substring tests say the same (tested)."""
    if not text.isascii():
        return _DEFANG_HINT.search(text) is not None
    if _BRACKET.search(text) is not None:
        return True
    lowered = text.lower()
    return (
        "hxx" in lowered
        or "h**" in lowered
        or "fxp" in lowered
        or "meow" in lowered
        or " dot " in lowered
        or " at " in lowered
    )


def refang(text: str) -> str:
    """Undo common defanging (hxxp, [.], (dot), [:], [at] ...); fanged text passes unchanged."""
    if not _looks_defanged(text):
        return text  # fast path: nothing looks defanged
    stripped = text.strip()
    scheme_match = _REFANG_SCHEMES.match(stripped)
    if scheme_match:
        defanged_scheme = scheme_match.group(0).lower()
        stripped = _SCHEME_FOR_DEFANGED[defanged_scheme] + stripped[scheme_match.end() :]
    lowered_tokens = stripped
    for token, upper_token, replacement in _REFANG_TOKENS_BOTH_CASES:
        if token in lowered_tokens or upper_token in lowered_tokens:
            lowered_tokens = lowered_tokens.replace(token, replacement).replace(
                upper_token, replacement
            )
    return lowered_tokens


# --- domains -----------------------------------------------------------------------------------
_ASCII_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)(?:(?!-)[a-z0-9_-]{1,63}(?<!-)\.)*(?!-)[a-z0-9-]{1,63}(?<!-)$"
)


def _script_of(char: str) -> str:
    """A coarse Unicode script name (first word of the character name): LATIN, CYRILLIC, ..."""
    try:
        return unicodedata.name(char).split(" ", 1)[0]
    except ValueError:
        return "UNKNOWN"


def mixed_scripts(label: str) -> set[str]:
    """Scripts used by the letters of a label (digits and hyphens are script-neutral)."""
    return {_script_of(c) for c in label if c.isalpha()}


@lru_cache(maxsize=65536)
def canonical_domain(value: str) -> Canonical:
    """Lower-case, refanged, trailing dot dropped, IDN as punycode (A-labels)."""
    text = refang(value).strip().rstrip(".").lower()
    if not text:
        raise CanonicalError("the domain name is empty: give a name such as example.org")
    if text.isascii():
        if text.startswith("xn--") or ".xn--" in text:
            try:
                decoded = idna.decode(text)
            except idna.IDNAError as exc:
                raise CanonicalError(
                    f"domain {value!r} has an invalid punycode label: {exc}"
                ) from exc
            return Canonical(text, _homograph_warnings(value, decoded))
        if not _ASCII_HOSTNAME.match(text):
            raise CanonicalError(
                f"{value!r} is not a valid domain name: use letters, digits and hyphens in "
                "dot-separated labels of at most 63 characters"
            )
        return Canonical(text)
    try:
        ascii_form = idna.encode(text, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise CanonicalError(
            f"{value!r} is not a valid internationalised domain name ({exc}); check the spelling"
        ) from exc
    return Canonical(ascii_form, _homograph_warnings(value, text))


def _homograph_warnings(original: str, unicode_form: str) -> tuple[str, ...]:
    for label in unicode_form.split("."):
        scripts = mixed_scripts(label)
        if len(scripts) > 1:
            return (
                f"domain {original!r} mixes scripts ({', '.join(sorted(scripts))}) in one label: "
                "possible homograph of a legitimate name",
            )
    return ()


# --- IP addresses ------------------------------------------------------------------------------
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4 = re.compile(rf"^(?P<address>{_OCTET}(?:\.{_OCTET}){{3}})(?:/(?P<prefix>[0-9]+))?$")
_PLAIN_IPV6 = re.compile(r"[0-9A-Fa-f:]{2,39}")


def _inet_ntop_agrees() -> bool:
    """Whether this platform's inet_ntop prints like ipaddress (RFC 5952: the longest run of two
    or more zero groups compressed, the first on ties, lower case); checked once at import."""
    samples = (
        "1:0:0:1:0:0:0:1",
        "1:0:0:0:1:0:0:1",
        "0:0:1:0:0:1:0:0",
        "1:0:2:0:3:0:4:0",
        "0:0:0:0:0:0:0:0",
        "2001:DB8:0:0:0:0:0:1",
        "0:1:0:0:0:0:0:0",
        "a:b:c:d:e:f:0:0",
    )
    try:
        return all(
            socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, sample))
            == str(ipaddress.IPv6Address(sample))
            for sample in samples
        )
    except (OSError, ValueError, AttributeError):
        return False


_INET_NTOP_AGREES = _inet_ntop_agrees()
_IP_EXAMPLE = {4: "192.0.2.1 or 192.0.2.0/24", 6: "2001:db8::1 or 2001:db8::/32"}


@lru_cache(maxsize=65536)
def canonical_ip(value: str, version: int) -> Canonical:
    """Compressed canonical text; a host CIDR (/32, /128) folds to the bare address."""
    text = refang(value).strip()
    if version == 4:
        simple = _CANONICAL_IPV4.match(text)
        if simple is not None:  # already canonical dotted quad: skip ipaddress (hot path)
            prefix = simple.group("prefix")
            if prefix is None or prefix == "32":
                return Canonical(simple.group("address"))
    elif _INET_NTOP_AGREES and _PLAIN_IPV6.fullmatch(text):
        # Hex groups and '::' only: the C library's parser and RFC 5952 printer agree with
        # ipaddress there (tested), at a tenth of the cost.  Its printer writes some addresses
        # with an embedded IPv4 part (::ffff:1.2.3.4), which ipaddress does not: those, and
        # whatever the C parser refuses, take the ipaddress path below.
        try:
            printed = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text))
        except OSError:
            printed = "."
        if "." not in printed:
            return Canonical(printed)
    try:
        if "/" in text:
            network = ipaddress.ip_network(text, strict=True)
            if network.version != version:
                raise ValueError(f"not an IPv{version} value")
            if network.prefixlen == network.max_prefixlen:
                return Canonical(str(network.network_address))
            return Canonical(str(network))
        address = ipaddress.ip_address(text)
        if address.version != version:
            raise ValueError(f"not an IPv{version} value")
        return Canonical(str(address))
    except ValueError as exc:
        raise CanonicalError(
            f"{value!r} is not a valid IPv{version} address or CIDR block ({exc}); "
            f"write it as {_IP_EXAMPLE[version]}"
            " with host bits zero"
        ) from exc


# --- URLs --------------------------------------------------------------------------------------
_DOTTED_QUAD = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21, "ws": 80, "wss": 443}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def _normalise_percent_encoding(component: str) -> str:
    """Upper-case escapes; decode escapes of unreserved characters (RFC 3986 §6.2.2.2)."""

    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _PERCENT_ESCAPE.sub(fix, component) if "%" in component else component


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, for paths that contain '.' or '..' segments."""
    if "/." not in path and not path.startswith("."):
        return path
    output: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if len(output) > 1:
                output.pop()
        elif segment != ".":
            output.append(segment)
    result = "/".join(output)
    if path.endswith(("/.", "/..")):
        result += "/"
    return result if result.startswith("/") else "/" + result


# scheme://host[:port][/path][?query][#fragment] with a plain host name (no userinfo, no IPv6
# literal): the common case, canonicalised without urlsplit's repeated netloc parsing.
_SIMPLE_URL = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<host>[A-Za-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<path>/[^?#\s]*)?(?:\?(?P<query>[^#\s]*))?(?:#\S*)?$"
)


def _canonical_simple_url(match: re.Match[str]) -> Canonical:
    scheme = match.group("scheme").lower()
    host_text = match.group("host")
    warnings: tuple[str, ...]
    if _DOTTED_QUAD.match(host_text):
        host, warnings = canonical_ip(host_text, 4).value, ()
    else:
        domain = canonical_domain(host_text)
        host, warnings = domain.value, domain.warnings
    port_text = match.group("port")
    if port_text is not None:
        port = int(port_text)
        if port > 65535:
            raise CanonicalError(f"URL port {port} is out of range 0-65535")
        if _DEFAULT_PORTS.get(scheme) != port:
            host = f"{host}:{port}"
    path = _remove_dot_segments(_normalise_percent_encoding(match.group("path") or "/"))
    query = match.group("query")
    canonical = f"{scheme}://{host}{path}"
    if query:
        canonical += "?" + _normalise_percent_encoding(query)
    return Canonical(canonical, warnings)


@lru_cache(maxsize=65536)
def canonical_url(value: str) -> Canonical:
    """Scheme and host lower-cased, IDN host as punycode, default port dropped, dot segments
    removed, percent-encoding normalised, empty path as '/', fragment dropped (never sent to a
    server, so it cannot change what is blocked)."""
    text = refang(value).strip()
    simple = _SIMPLE_URL.match(text)
    if simple is not None:
        return _canonical_simple_url(simple)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise CanonicalError(
            f"{value!r} is not a valid URL ({exc}); give scheme://host/path"
        ) from exc
    if not parts.scheme or not parts.hostname:
        raise CanonicalError(
            f"{value!r} is not an absolute URL: give scheme and host, e.g. https://example.org/path"
        )
    scheme = parts.scheme.lower()
    warnings: tuple[str, ...] = ()
    host = parts.hostname
    if host.startswith("[") or ":" in host:
        host = "[" + canonical_ip(host.strip("[]"), 6).value + "]"
    elif _DOTTED_QUAD.match(host):
        host = canonical_ip(host, 4).value
    else:
        domain = canonical_domain(host)
        host, warnings = domain.value, domain.warnings
    netloc = host
    if parts.username is not None:
        userinfo = parts.username + (f":{parts.password}" if parts.password is not None else "")
        netloc = f"{userinfo}@{host}"
    if port is not None and _DEFAULT_PORTS.get(scheme) != port:
        netloc = f"{netloc}:{port}"
    path = _remove_dot_segments(_normalise_percent_encoding(parts.path)) or "/"
    query = _normalise_percent_encoding(parts.query)
    return Canonical(urlunsplit((scheme, netloc, path, query, "")), warnings)


# --- e-mail and hashes -------------------------------------------------------------------------
@lru_cache(maxsize=65536)
def canonical_email(value: str) -> Canonical:
    """Local part kept as written (it may be case-sensitive); domain canonicalised."""
    text = refang(value).strip()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in local):
        raise CanonicalError(f"{value!r} is not an e-mail address: write local-part@domain")
    canonical = canonical_domain(domain)
    return Canonical(f"{local}@{canonical.value}", canonical.warnings)


_HEX = re.compile(r"^[0-9a-fA-F]+$")


_SSDEEP = re.compile(r"^[a-zA-Z0-9/+:.]{1,128}$")


def canonical_hash(algorithm: str, value: str) -> Canonical:
    """Hex digests lower-cased and length-checked (no surrounding spaces: the official pattern
    checker refuses them too); SSDEEP checked by shape; other algorithms kept as written."""
    expected = HASH_HEX_LENGTHS.get(algorithm)
    if expected is not None:
        if len(value) != expected or not _HEX.match(value):
            raise CanonicalError(
                f"{algorithm} hash {value!r} must be exactly {expected} hexadecimal characters; "
                "check it was not truncated or pasted with spaces"
            )
        return Canonical(value.lower())
    if algorithm == "SSDEEP" and not _SSDEEP.match(value):
        raise CanonicalError(
            f"SSDEEP hash {value!r} must be 1-128 characters of letters, digits and / + : ."
        )
    return Canonical(value)


def canonical_observable(object_type: str, property_path: tuple[str, ...], value: str) -> Canonical:
    """Canonical text for one pattern comparison value (object_type:property_path = value)."""
    if property_path == ("value",):
        if object_type == "domain-name":
            return canonical_domain(value)
        if object_type == "url":
            return canonical_url(value)
        if object_type == "ipv4-addr":
            return canonical_ip(value, 4)
        if object_type == "ipv6-addr":
            return canonical_ip(value, 6)
        if object_type == "email-addr":
            return canonical_email(value)
    if object_type == "file" and len(property_path) == 2 and property_path[0] == "hashes":
        return canonical_hash(property_path[1], value)
    return Canonical(value)


# --- ids and keys ------------------------------------------------------------------------------
def dedup_key(canonical_pattern: str, bus_namespace: uuid.UUID) -> str:
    """The bus dedup key: UUIDv5 in the bus namespace over the canonical pattern (the fast path
    of `stixbus.core.ids`: it runs once per indicator)."""
    return uuid5(bus_namespace, canonical_pattern)


def deterministic_sco_id(sco: dict[str, object]) -> str | None:
    """The STIX 2.1 §2.9 id of an SCO: UUIDv5 (SCO namespace) over the canonical JSON of its ID
    contributing properties.  None for types the bus does not route."""
    object_type = sco.get("type")
    if not isinstance(object_type, str) or object_type not in SCO_ID_CONTRIBUTING_PROPERTIES:
        return None
    contributing = {
        name: sco[name] for name in SCO_ID_CONTRIBUTING_PROPERTIES[object_type] if name in sco
    }
    if not contributing:
        return None
    # RFC 8785 JCS for these plain string/dict values = sorted keys, no whitespace, UTF-8.
    canonical_json = orjson.dumps(contributing, option=orjson.OPT_SORT_KEYS).decode("utf-8")
    return f"{object_type}--{uuid5(SCO_NAMESPACE, canonical_json)}"
