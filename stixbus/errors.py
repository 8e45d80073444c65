"""The errors stixbus raises on purpose: each says what went wrong and what to do about it.

    StixbusError                 what went wrong (`what`) + what to do (`fix`)
    ├── UserError                the request cannot be done as asked (bad option, unknown name)
    │   ├── NotFound             a named thing does not exist (org, agreement, topic); a KeyError
    │   └── ConfigError          a file or setting the operator edits is unreadable or invalid
    │       └── CredentialsError, connectors' ConnectorConfigError, …
    ├── RejectedInput            input data refused (a bundle, a feed line); a ValueError
    └── operations that failed: kafka.client.BrokerError (unreachable, ACL denial),
        kafka.acl_admin.SecurityError, connectors.base.ConnectorError (source down, …)

The CLI (`stixbus.cli.main.main`) catches `StixbusError` only and prints
`stixbus: <what> — <what to do>` with exit status 1.  Any other exception is a bug and shows its
traceback.  Internal control flow (the core's `_Rejected` and the like) never leaves its module.

This module imports nothing from the project, so every layer, `schemas` included, may raise these
errors (it is the bottom layer of the import-linter contract in pyproject.toml).  `ConfigError` is
also a `ValueError` and `NotFound` a `KeyError`, so code that caught the builtin types before
keeps working.
"""

from __future__ import annotations


class StixbusError(Exception):
    """What went wrong, and what to do about it."""

    fix: str = "see the documentation in docs/"

    def __init__(self, what: str, fix: str | None = None) -> None:
        super().__init__(what)
        self.what = what
        if fix is not None:
            self.fix = fix

    def __str__(self) -> str:
        return f"{self.what} — {self.fix}" if self.fix else self.what


class UserError(StixbusError):
    """The request cannot be carried out as asked."""

    fix = "check the command's arguments (`stixbus COMMAND --help`)"


class NotFound(UserError, KeyError):
    """A named thing (org, agreement, topic, file) does not exist."""

    fix = "check the name"

    def __str__(self) -> str:  # KeyError would show repr(what)
        return StixbusError.__str__(self)


class ConfigError(UserError, ValueError):
    """A file or setting the operator edits is unreadable or invalid."""

    fix = "fix the file or setting named above and run the command again"


class RejectedInput(StixbusError, ValueError):
    """Input data (a bundle, an object, a feed line) was refused."""

    fix = "fix the input and send it again"
