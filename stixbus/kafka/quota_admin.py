"""Read and write the broker's user quotas (the Kafka protocol's DescribeClientQuotas and
AlterClientQuotas, KIP-546), as the super user `admin`.

Why raw requests: confluent-kafka 2.16's AdminClient (librdkafka) has no client-quota call, and
aiokafka's admin client has none either, but aiokafka's protocol layer has DescribeClientQuotas
v0 and its connections negotiate versions, so the missing AlterClientQuotas v0 (five fields) is
declared below.  The alternative, Kafka's `kafka-configs.sh`, needs the Kafka distribution and a
JVM on the operator's host and a password in a properties file; this needs neither and speaks
with the same TLS/SASL settings as every other stixbus client (stixbus.kafka.config).
The pure plan lives in stixbus.kafka.quotas.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import for_code
from aiokafka.protocol.admin import DescribeClientQuotasRequest
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Float64, Int16, Int32, Schema, String

from stixbus.errors import StixbusError
from stixbus.kafka.admin import admin_client
from stixbus.kafka.quotas import Quota

_ENTITY = Array(("entity_type", String("utf-8")), ("entity_name", String("utf-8")))
USER = "user"
MATCH_SPECIFIED = 2  # DescribeClientQuotas: any named entity (not the <default> one)
TIMEOUT_MS = 15000


class QuotaError(StixbusError, RuntimeError):
    """The broker refused a quota request; the message names the user and the broker's error."""


class AlterClientQuotasResponse_v0(Response):  # Kafka protocol naming, as aiokafka's
    API_KEY = 49
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "entries",
            Array(
                ("error_code", Int16),
                ("error_message", String("utf-8")),
                ("entity", _ENTITY),
            ),
        ),
    )


class AlterClientQuotasRequest_v0(RequestStruct):
    API_KEY = 49
    API_VERSION = 0
    RESPONSE_TYPE = AlterClientQuotasResponse_v0
    SCHEMA = Schema(
        (
            "entries",
            Array(
                ("entity", _ENTITY),
                ("ops", Array(("key", String("utf-8")), ("value", Float64), ("remove", Boolean))),
            ),
        ),
        ("validate_only", Boolean),
    )


class AlterClientQuotasRequest(Request[AlterClientQuotasRequest_v0]):
    API_KEY = 49

    def __init__(self, entries: list[tuple[Any, ...]], validate_only: bool = False) -> None:
        self._entries = entries
        self._validate_only = validate_only

    def build(
        self, request_struct_class: type[AlterClientQuotasRequest_v0]
    ) -> AlterClientQuotasRequest_v0:
        return request_struct_class(self._entries, self._validate_only)


def _check(code: int, message: str | None, what: str) -> None:
    if code:
        name = for_code(code).__name__
        raise QuotaError(
            f"{what} failed: {name} ({message or 'no message'})",
            "check that the broker is Kafka 2.6+ and that you run as the super user admin",
        )


async def _describe(conn: dict[str, Any]) -> list[Quota]:
    admin = admin_client(conn, TIMEOUT_MS)
    await admin.start()
    try:
        request = DescribeClientQuotasRequest([(USER, MATCH_SPECIFIED, None)], True)
        response = await admin._send_request(request)  # no public call for it
        _check(response.error_code, response.error_message, "describe client quotas")
        out: list[Quota] = []
        for entity, values in response.entries:
            if len(entity) != 1 or entity[0][0] != USER or entity[0][1] is None:
                continue  # strict=True should leave only single-user entities; be sure
            out += [Quota(entity[0][1], key, float(value)) for key, value in values]
        return sorted(out)
    finally:
        await admin.close()


async def _alter(conn: dict[str, Any], to_set: list[Quota], remove: list[Quota]) -> None:
    ops: dict[str, list[tuple[str, float, bool]]] = {}
    for q in to_set:
        ops.setdefault(q.user, []).append((q.key, q.value, False))
    for q in remove:
        ops.setdefault(q.user, []).append((q.key, 0.0, True))
    if not ops:
        return
    admin = admin_client(conn, TIMEOUT_MS)
    await admin.start()
    try:
        entries = [([(USER, user)], user_ops) for user, user_ops in sorted(ops.items())]
        # Quotas live in the KRaft metadata log: any broker forwards the change to the controller.
        response = await admin._send_request(AlterClientQuotasRequest(entries))
        for code, message, entity in response.entries:
            _check(code, message, f"set the quotas of user {entity[0][1]!r}")
    finally:
        await admin.close()


def describe_quotas(conn: dict[str, Any]) -> list[Quota]:
    """Every quota of a single named user the broker has (client-id and default entities are
    not the bus's and are left out)."""
    return asyncio.run(_describe(conn))


def alter_quotas(conn: dict[str, Any], to_set: list[Quota], remove: list[Quota]) -> None:
    """Set `to_set` and remove the keys of `remove`, in one request."""
    asyncio.run(_alter(conn, to_set, remove))
