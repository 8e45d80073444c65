"""Connection settings shared by every Kafka client the bus opens (worker, CLI, connectors).

One place turns Settings into client keyword arguments, so security (SASL/SCRAM over TLS,
docs/security.md) applies to every client alike: aiokafka (`client_kwargs`), Faust
(`faust_kwargs`) and confluent-kafka's admin client (`confluent_config`).

Who connects: `settings.sasl_username` when set (an org's own machine sets only its own
credentials); otherwise the `principal` the command acts as (`stixbus publish --as bank-a` acts
as `bank-a`; commands that name nobody act as the operator principal), with its password from
`settings.credentials_file`.  Passwords never come from the
command line.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

from stixbus.errors import ConfigError
from stixbus.files import atomic_write
from stixbus.kafka.acls import OPERATOR
from stixbus.settings import Settings


class CredentialsError(ConfigError):
    """Kafka credentials are missing or unreadable; the message says what to set."""


def read_credentials(path: Path) -> dict[str, str]:
    """The `{"users": {principal: password}}` file; {} when it does not exist."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CredentialsError(
            f"cannot read Kafka credentials file {path}: {exc}; fix or delete it, then run "
            "`stixbus security apply`"
        ) from exc
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in users.items()
    ):
        raise CredentialsError(
            f'Kafka credentials file {path} must be {{"users": {{"<principal>": "<password>"}}}}'
        )
    return dict(users)


def write_credentials(path: Path, users: dict[str, str]) -> None:
    """Atomically replace the credentials file, readable by its owner only."""
    text = json.dumps({"users": dict(sorted(users.items()))}, indent=2) + "\n"
    atomic_write(path, text.encode("utf-8"), 0o600)


def uses_sasl(settings: Settings) -> bool:
    return settings.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def credentials(settings: Settings, principal: str | None = None) -> tuple[str, str]:
    """(username, password) for SASL, or CredentialsError naming what to set."""
    username = settings.sasl_username or principal or OPERATOR
    if settings.sasl_username and settings.sasl_password is not None:
        return username, settings.sasl_password.get_secret_value()
    if settings.credentials_file is None:
        raise CredentialsError(
            f"Kafka security protocol {settings.security_protocol} needs credentials and there "
            f"is no password for Kafka user {username!r}: set STIXBUS_SASL_USERNAME and "
            "STIXBUS_SASL_PASSWORD, or STIXBUS_CREDENTIALS_FILE to a credentials file"
        )
    password = read_credentials(settings.credentials_file).get(username)
    if password is None:
        raise CredentialsError(
            f"no password for Kafka user {username!r} in {settings.credentials_file}: run "
            "`stixbus security apply` (it creates users for every org in the registry), or set "
            "STIXBUS_SASL_USERNAME/STIXBUS_SASL_PASSWORD"
        )
    return username, password


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """A verifying TLS context for SASL_SSL (hostname checked against the broker certificate)."""
    if settings.security_protocol != "SASL_SSL":
        return None
    from aiokafka.helpers import create_ssl_context

    if settings.ssl_cafile is not None and not settings.ssl_cafile.is_file():
        raise CredentialsError(
            f"CA file {settings.ssl_cafile} (STIXBUS_SSL_CAFILE) does not exist: point it at the "
            "CA that signed the broker certificate (local stack: <STIXBUS_HOME>/secrets/ca.pem)"
        )
    return create_ssl_context(cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)


def client_kwargs(settings: Settings, principal: str | None = None) -> dict[str, Any]:
    """aiokafka keyword arguments: bootstrap servers plus security options.

    `principal` is who the command acts as when `settings.sasl_username` is not set.
    """
    kwargs: dict[str, Any] = {"bootstrap_servers": settings.bootstrap_servers}
    if not uses_sasl(settings):
        return kwargs
    username, password = credentials(settings, principal)
    kwargs.update(
        security_protocol=settings.security_protocol,
        sasl_mechanism=settings.sasl_mechanism,
        sasl_plain_username=username,
        sasl_plain_password=password,
    )
    context = ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    return kwargs


def faust_kwargs(settings: Settings, principal: str) -> dict[str, Any]:
    """`faust.App` keyword arguments for the same security (broker_credentials)."""
    if not uses_sasl(settings):
        return {}
    import faust

    username, password = credentials(settings, principal)
    return {
        "broker_credentials": faust.SASLCredentials(
            username=username,
            password=password,
            ssl_context=ssl_context(settings),
            mechanism=settings.sasl_mechanism,
        )
    }


def confluent_config(settings: Settings, principal: str) -> dict[str, Any]:
    """librdkafka configuration (confluent-kafka's AdminClient) for the same security."""
    config: dict[str, Any] = {"bootstrap.servers": settings.bootstrap_servers}
    if not uses_sasl(settings):
        return config
    username, password = credentials(settings, principal)
    config.update(
        {
            "security.protocol": settings.security_protocol,
            "sasl.mechanism": settings.sasl_mechanism,
            "sasl.username": username,
            "sasl.password": password,
        }
    )
    if settings.security_protocol == "SASL_SSL" and settings.ssl_cafile is not None:
        config["ssl.ca.location"] = str(settings.ssl_cafile)
    return config
