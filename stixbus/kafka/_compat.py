"""Every use of a library's private internals, in one place (faust-streaming 0.15).

Keep this file small: each function says what it reaches into and why, so a library upgrade
that breaks one of them breaks here, with a test (tests/broker/test_security_host.py) that
shows it.

- `serve_only`: Faust's web server always mounts an index view at `/` (the production index
  when the statistics view is off) and blueprints a later version may add; the public settings
  (`web_*_enabled`, set in stixbus/app.py) turn off the known ones.  This installs an aiohttp
  middleware on the driver's `web_app` (an attribute of Faust's aiohttp driver, not a
  documented API) that answers 404 for every route whose path is not allowed: an allow list,
  so a view Faust adds in a future version is not served either.
- `TaxiiHTTPConnection` (taxii2-client 2.3.0 `taxii2client.common._HTTPConnection`): the TAXII
  pull connector builds one connection with our `requests` session (urllib3 `Retry`, TLS
  settings) and hands it to the client's `Collection`; the public constructors only take a
  user/password and build their own session.  Tested by tests/broker/test_connector_taxii.py.
- `RequestHandler` (aiohttp `web_protocol.RequestHandler`): the TAXII inbox subclasses it for
  the header deadline and the connection cap (connectors/inbox.py `GuardedHandler`), which
  aiohttp's public settings do not offer.  Tested by tests/broker/test_connector_inbox.py.
- `as_current_event` (faust `streams._current_event`): a table write goes to the changelog
  partition and rocksdb partition of "the current event", a context variable the stream sets
  per event.  The route agent processes a batch (`Stream.take_events`) and writes the table
  after the batch's acks, so it sets the variable to each key's own event for its write.
  Tested by tests/broker/test_multi_worker.py and test_dedup_e2e.py (state on the right
  partition survives restarts and rebalances).
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager

import faust
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from faust import streams as _faust_streams
from faust.types import EventT
from taxii2client.common import _HTTPConnection as TaxiiHTTPConnection

__all__ = ["RequestHandler", "TaxiiHTTPConnection", "as_current_event", "serve_only"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def serve_only(app: faust.App, paths: Iterable[str]) -> None:
    """Answer 404 on the worker's web server for every path not in `paths` (exact match of
    the route that matched, so `/table/x` and `/healthz/../table` are both refused)."""
    allowed = frozenset(paths)

    @web.middleware
    async def allow_list(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route
        resource = route.resource if route is not None else None
        if resource is None or resource.canonical not in allowed:
            raise web.HTTPNotFound()
        return await handler(request)

    driver = app.web
    web_app = getattr(driver, "web_app", None)
    if not isinstance(web_app, web.Application):
        raise RuntimeError(
            f"faust web driver {type(driver).__name__} has no aiohttp web_app: the web allow "
            "list (stixbus/kafka/_compat.py) needs updating for this faust version"
        )
    web_app.middlewares.append(allow_list)


@contextmanager
def as_current_event(event: EventT) -> Iterator[None]:
    """Table writes inside this block belong to `event`'s partition."""
    token = _faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _faust_streams._current_event.reset(token)
