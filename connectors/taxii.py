"""TAXII 2.1 pull: poll collections with `taxii2-client`, publish each page as a submission.

Per collection the state file keeps `added_after`: the `X-TAXII-Date-Added-Last` of the last page
whose objects the broker acknowledged.  A run asks for `added_after=<cursor>`, follows `next`
until `more` is false, and moves the cursor after each acknowledged page, so a restart resumes
after the last published page (neither re-publishing nor skipping).  When a server sends no
`X-TAXII-Date-Added-Last`, the cursor falls back to the request time of the run's first page
(a warning says so).  HTTP 429/5xx and connection errors are retried by urllib3's `Retry` on the
session, with exponential backoff (honouring Retry-After); 401/403 fail at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import requests
from pydantic import BaseModel, ConfigDict, Field
from taxii2client.common import TokenAuth
from taxii2client.exceptions import TAXIIServiceException
from taxii2client.v21 import Collection

from connectors.base import (
    ConnectorError,
    PullConfig,
    Report,
    RetryPolicy,
    StateFile,
    Submitter,
    now_utc,
    retrying_session,
    secret_from_env,
    source_errors,
)
from schemas.envelope import Reason
from stixbus.core.ids import stix_time
from stixbus.kafka._compat import TaxiiHTTPConnection
from stixbus.settings import Settings


class CollectionRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="Collection URL: https://host/api-root/collections/<id>/")
    added_after: str | None = Field(
        default=None, description="Start here on the first run (else: the whole collection)"
    )


class TaxiiConfig(PullConfig):
    connector: Literal["taxii"] = "taxii"
    collections: list[CollectionRef] = Field(min_length=1)
    username: str | None = None
    password_env: str | None = Field(default=None, description="Env var with the password")
    api_key_env: str | None = Field(default=None, description="Env var with an API key")
    api_key_header: str = Field(
        default="Authorization",
        description="API key header; 'Authorization' sends 'Token <key>' (taxii2-client style)",
    )
    page_size: int = Field(default=500, ge=1, le=10_000)
    types: list[str] | None = Field(default=None, description="match[type] filter")
    verify_tls: bool = True
    retry_attempts: int = Field(default=5, ge=1)
    retry_base_delay: float = Field(default=0.5, gt=0)
    timeout_seconds: float = Field(default=60, gt=0)


def connection(config: TaxiiConfig) -> tuple[TaxiiHTTPConnection, dict[str, str]]:
    """A taxii2-client connection with auth; returns it and a dict holding the last headers."""
    password = secret_from_env(config.password_env, f"taxii {config.name} password")
    api_key = secret_from_env(config.api_key_env, f"taxii {config.name} API key")
    if config.username and not password:
        raise ConnectorError(
            f"taxii {config.name}: username is set but password_env is not — set both or neither"
        )
    auth: requests.auth.AuthBase | None = None
    if api_key and config.api_key_header.lower() == "authorization":
        auth = TokenAuth(api_key)
    conn = TaxiiHTTPConnection(
        user=config.username, password=password, verify=config.verify_tls, version="2.1", auth=auth
    )
    if api_key and config.api_key_header.lower() != "authorization":
        conn.session.headers[config.api_key_header] = api_key
    last: dict[str, str] = {}

    def remember(resp: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        last.clear()
        last.update({k.lower(): v for k, v in resp.headers.items()})
        return resp

    conn.session.hooks["response"].append(remember)
    # requests has no default timeout; give every request one.
    original = conn.session.request

    def request(method: str, url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", config.timeout_seconds)
        return original(method, url, **kwargs)

    conn.session.request = request
    return conn, last


async def run_once(
    config: TaxiiConfig,
    settings: Settings,
    report: Report,
    submitter: Submitter,
    progress_total: Callable[[int], None] | None = None,
) -> None:
    store = StateFile(config.state_path(settings))
    state = store.load()
    cursors: dict[str, str] = state.setdefault("cursors", {})
    policy = RetryPolicy(config.retry_attempts, config.retry_base_delay)
    conn, last_headers = connection(config)
    retrying_session(policy, conn.session)
    try:
        for ref in config.collections:
            await _pull(
                config, ref, conn, last_headers, policy, store, state, cursors, report, submitter
            )
    finally:
        conn.close()


async def _pull(
    config: TaxiiConfig,
    ref: CollectionRef,
    conn: TaxiiHTTPConnection,
    last_headers: dict[str, str],
    policy: RetryPolicy,
    store: StateFile,
    state: dict[str, Any],
    cursors: dict[str, str],
    report: Report,
    submitter: Submitter,
) -> None:
    url = ref.url if ref.url.endswith("/") else ref.url + "/"
    what = f"taxii {config.name} collection {url}"
    collection = source_errors(
        f"{what} (collection info)",
        lambda: _collection(url, conn),
        policy,
    )
    if not collection.can_read:
        raise ConnectorError(f"{what}: the server says can_read is false — ask for read access")
    cursor = cursors.get(url) or ref.added_after
    started = stix_time(now_utc())
    filters: dict[str, Any] = {"limit": config.page_size}
    if cursor:
        filters["added_after"] = cursor
    if config.types:
        filters["type"] = config.types
    next_token: str | None = None
    while True:
        kwargs = dict(filters)
        if next_token:
            kwargs["next"] = next_token
        envelope: Any = source_errors(
            f"{what} (get objects)", functools.partial(collection.get_objects, **kwargs), policy
        )
        if not isinstance(envelope, dict):
            raise ConnectorError(f"{what}: the server sent no TAXII envelope (a JSON object)")
        objects = [o for o in envelope.get("objects", []) if isinstance(o, dict)]
        skipped = len(envelope.get("objects", [])) - len(objects)
        if skipped:
            report.reject(
                "/objects", f"{what}: {skipped} entries are not JSON objects", Reason.NOT_STIX
            )
        report.read += len(objects)
        page_last = last_headers.get("x-taxii-date-added-last")
        more = bool(envelope.get("more"))
        if page_last is None and objects:
            if "no_date_added_header" not in state:
                report.warnings.append(
                    f"{what}: the server sends no X-TAXII-Date-Added-Last; the cursor falls back "
                    "to this run's start time"
                )
            page_last = started if not more else cursor

        def commit(value: str | None = page_last) -> None:
            if value:
                cursors[url] = value
                store.save(state)

        await submitter.add(objects, commit)
        await submitter.flush()
        next_token = envelope.get("next")
        if not more or not next_token:
            break


def _collection(url: str, conn: TaxiiHTTPConnection) -> Collection:
    try:
        collection = Collection(url, conn=conn)
        collection.refresh()  # fetch its info now, inside `source_errors`
        return collection
    except TAXIIServiceException as exc:
        raise ConnectorError(f"TAXII collection {url}: {exc}") from exc
