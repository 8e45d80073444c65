"""Turn the producer's STIX object into what one subscriber receives under one agreement (pure).

Order: drop custom properties, pseudonymise properties, apply the attribution mode, add the
no-onward-sharing marking, then give the object a derived id when the agreement changes content.

The id rule: a STIX version is (id, modified), and the bus must never publish two contents under
one version.  So whenever the agreement *can* change content (`Agreement.rewrites_content`) the
delivered object gets `derived_object_id(...)`: UUIDv5 over the original id, the agreement id and a
fingerprint of the agreement's transformation settings.  The decision depends on the agreement,
not on this object's content, so every version and the revocation of one object land on the same
derived id; `modified` is kept.  SCOs keep their id (it is derived from their own contributing
properties, which the bus does not change) and have no creator.

In attributed mode the original id is kept in `external_references` (source_name
"stixbus-source").  Pseudonymous and anonymous deliveries do not carry it: an id seen elsewhere
would re-identify the producer; the audit record of the decision keeps the link instead.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from functools import lru_cache
from typing import Any

from schemas.agreement import Agreement, Attribution
from schemas.org import Registry
from stixbus.core.decision import Decision
from stixbus.core.ids import uuid5

SOURCE_REFERENCE_NAME = "stixbus-source"
BUS_OBJECTS_CREATED = "2026-01-01T00:00:00.000Z"
PSEUDONYM_PREFIX = "pseudonym:"
NO_ONWARD_SHARING_STATEMENT = (
    "Delivered by stixbus under a sharing agreement that forbids onward sharing: use within the "
    "recipient organisation for the agreement's purpose only, whatever the TLP would allow."
)

# Properties that name a contributor in prose or links more often than not: dropped from
# pseudonymous and anonymous deliveries unless the agreement keeps them (or pseudonymises one).
CONTRIBUTOR_TEXT_PROPERTIES = frozenset(
    {"description", "external_references", "abstract", "content", "explanation", "x_mitre_notes"}
)

# Reference properties that point at markings, never at the producer.
_MARKING_REF_PROPERTIES = frozenset({"object_marking_refs"})


def _uuid5(registry: Registry, seed: str) -> str:
    return _cached_uuid5(registry.bus.namespace, seed)


@lru_cache(maxsize=65536)
def _cached_uuid5(namespace: uuid.UUID, seed: str) -> str:
    # The same few ids (markings, pseudonyms) are derived for every delivery: hashing is the cost.
    return uuid5(namespace, seed)


def transformation_fingerprint(agreement: Agreement) -> str:
    """Short digest of the settings that shape delivered content (changes them -> new ids)."""
    settings = {
        "attribution": agreement.attribution.value,
        "drop": sorted(agreement.redaction.drop_custom_properties),
        "pseudonymise": sorted(agreement.redaction.pseudonymise),
        "onward_sharing": agreement.onward_sharing,
    }
    if agreement.redaction.keep_contributor_text:  # absent when false: older ids stay stable
        settings["keep_contributor_text"] = True
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def derived_object_id(original_id: str, agreement: Agreement, registry: Registry) -> str:
    """The id a rewritten object is delivered under (same for every version of the original).

    Under pseudonymous and anonymous attribution the id is keyed with the bus secret: an
    unkeyed one would let a subscriber that knows the original id (from another delivery)
    recognise the copy and so name its producer."""
    object_type = original_id.split("--", 1)[0]
    seed = f"{original_id}|{agreement.id}|{transformation_fingerprint(agreement)}"
    if agreement.attribution is Attribution.ATTRIBUTED:
        return f"{object_type}--{_uuid5(registry, seed)}"
    return f"{object_type}--{_keyed_uuid(registry.pseudonym_key, 'derived|' + seed)}"


def pseudonym_identity_id(agreement_id: str, producer_org_id: str, registry: Registry) -> str:
    """Stable per (agreement, producer): a subscriber can follow one producer, not name it.

    HMAC-SHA256 under the bus secret, so nobody holding the repo's files (namespace, org ids,
    agreement ids) can recompute the pseudonym of each org and compare."""
    seed = f"pseudonym|{agreement_id}|{producer_org_id}"
    return f"identity--{_keyed_uuid(registry.pseudonym_key, seed)}"


@lru_cache(maxsize=65536)
def _keyed_uuid(key: bytes, seed: str) -> str:
    digest = hmac.new(key, seed.encode(), hashlib.sha256).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def pseudonym_identity(
    agreement_id: str, producer_org_id: str, registry: Registry
) -> dict[str, Any]:
    """The STIX identity to deliver alongside pseudonymous objects (reveals nothing but a tag)."""
    identity_id = pseudonym_identity_id(agreement_id, producer_org_id, registry)
    return {
        "type": "identity",
        "spec_version": "2.1",
        "id": identity_id,
        "created_by_ref": registry.bus.identity_id,
        "created": BUS_OBJECTS_CREATED,
        "modified": BUS_OBJECTS_CREATED,
        "name": f"Pseudonymous participant {identity_id.removeprefix('identity--')[:8]}",
        "description": f"A stable pseudonym the bus assigns under agreement {agreement_id}.",
        "identity_class": "organization",
    }


def bus_identity(registry: Registry) -> dict[str, Any]:
    """The bus's STIX identity: the only visible source of anonymous deliveries."""
    return {
        "type": "identity",
        "spec_version": "2.1",
        "id": registry.bus.identity_id,
        "created": BUS_OBJECTS_CREATED,
        "modified": BUS_OBJECTS_CREATED,
        "name": registry.bus.name,
        "identity_class": "system",
    }


def no_onward_sharing_marking_id(registry: Registry) -> str:
    return f"marking-definition--{_uuid5(registry, 'stixbus|marking|no-onward-sharing')}"


def no_onward_sharing_marking(registry: Registry) -> dict[str, Any]:
    """The statement marking-definition the bus defines; deliver it with marked objects."""
    return {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": no_onward_sharing_marking_id(registry),
        "created_by_ref": registry.bus.identity_id,
        "created": BUS_OBJECTS_CREATED,
        "name": "stixbus: no onward sharing",
        "definition_type": "statement",
        "definition": {"statement": NO_ONWARD_SHARING_STATEMENT},
    }


def pseudonymise_value(value: str, property_name: str, agreement_id: str, key: bytes) -> str:
    digest = hmac.new(
        key, f"{agreement_id}|{property_name}|{value}".encode(), hashlib.sha256
    ).hexdigest()
    return PSEUDONYM_PREFIX + digest[:32]


def companion_objects(
    decision: Decision, agreement: Agreement, registry: Registry
) -> list[dict[str, Any]]:
    """Bus-defined objects the delivered object refers to; send them to the subscriber too."""
    companions: list[dict[str, Any]] = []
    if agreement.attribution is Attribution.PSEUDONYMOUS:
        companions.append(pseudonym_identity(agreement.id, decision.publisher, registry))
    elif agreement.attribution is Attribution.ANONYMOUS:
        companions.append(bus_identity(registry))
    if not agreement.onward_sharing:
        companions.append(no_onward_sharing_marking(registry))
    return companions


def apply_transformations(
    stix_obj: dict[str, Any],
    decision: Decision,
    agreement: Agreement,
    registry: Registry,
) -> dict[str, Any]:
    """The object as delivered to `decision.subscriber`; the input is not modified.

    Pseudonymised values are HMACs under the registry's pseudonym key (the bus secret).
    """
    if not decision.allow or decision.agreement_id != agreement.id:
        raise ValueError(
            f"cannot transform {stix_obj.get('id')!r}: the decision "
            f"({'allow' if decision.allow else 'deny'} via {decision.agreement_id!r}) does not "
            f"allow delivery under agreement {agreement.id!r}; call decide() first"
        )
    redaction = agreement.redaction
    out: dict[str, Any] = {
        name: value for name, value in stix_obj.items() if not redaction.drops(name)
    }

    if redaction.pseudonymise:
        key = registry.pseudonym_key
        for name in redaction.pseudonymise:
            if name in out:
                pseudonymised = _pseudonymise(out[name], name, agreement.id, key)
                if pseudonymised is None:
                    # Structured values cannot be pseudonymised safely: withhold them entirely.
                    del out[name]
                else:
                    out[name] = pseudonymised

    if agreement.attribution is not Attribution.ATTRIBUTED:
        if not redaction.keep_contributor_text:
            for name in CONTRIBUTOR_TEXT_PROPERTIES.difference(redaction.pseudonymise):
                out.pop(name, None)
        replacement = (
            pseudonym_identity_id(agreement.id, decision.publisher, registry)
            if agreement.attribution is Attribution.PSEUDONYMOUS
            else registry.bus.identity_id
        )
        producer_identities = {registry.get(decision.publisher).identity_id}
        creator = stix_obj.get("created_by_ref")
        if isinstance(creator, str):
            producer_identities.add(creator)
        _replace_references(out, producer_identities, replacement)

    if not agreement.onward_sharing:
        marking = no_onward_sharing_marking_id(registry)
        refs = list(out.get("object_marking_refs", []))
        if marking not in refs:
            refs.append(marking)
        out["object_marking_refs"] = refs

    is_sco = "created" not in stix_obj
    if agreement.rewrites_content and not is_sco:
        original_id = stix_obj["id"]
        out["id"] = derived_object_id(original_id, agreement, registry)
        if agreement.attribution is Attribution.ATTRIBUTED:
            references = list(out.get("external_references", []))
            references.append(
                {
                    "source_name": SOURCE_REFERENCE_NAME,
                    "external_id": original_id,
                    "description": (
                        f"Redacted copy of {original_id} delivered under agreement {agreement.id}"
                    ),
                }
            )
            out["external_references"] = references
    return out


def _pseudonymise(value: object, name: str, agreement_id: str, key: bytes) -> object | None:
    if isinstance(value, str):
        return pseudonymise_value(value, name, agreement_id, key)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [pseudonymise_value(v, name, agreement_id, key) for v in value]
    return None


def _replace_references(out: dict[str, Any], producers: set[str], replacement: str) -> None:
    """Point every top-level *_ref / *_refs naming the producer at the replacement identity."""
    for name, value in list(out.items()):
        if name in _MARKING_REF_PROPERTIES:
            continue
        if name.endswith("_ref") and isinstance(value, str) and value in producers:
            out[name] = replacement
        elif name.endswith("_refs") and isinstance(value, list):
            replaced = [replacement if v in producers else v for v in value]
            # A producer listed twice (or with the replacement) must not become a duplicate.
            out[name] = list(dict.fromkeys(replaced))
