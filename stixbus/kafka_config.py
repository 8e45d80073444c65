"""Connection settings shared by every Kafka client the bus opens (worker, CLI, connectors).

One place turns Settings into aiokafka keyword arguments, so security (SASL/TLS, the security
issue) applies to every client alike.
"""

from __future__ import annotations

from typing import Any

from stixbus.settings import Settings


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """aiokafka keyword arguments: bootstrap servers plus security options."""
    return {"bootstrap_servers": settings.bootstrap_servers}
