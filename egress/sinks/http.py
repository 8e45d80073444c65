"""The lists and the MISP feed over HTTPS, with the TAXII server's credentials
(egress/credentials.py, HTTP Basic or bearer token):

    GET /lists/<org>/{ipv4,ipv6,domains,urls}.txt   firewall external dynamic lists
    GET /misp/<org>/manifest.json                   MISP feed (the feed URL is /misp/<org>)
    GET /misp/<org>/<event uuid>.json
    GET /metrics                                    Prometheus (entry counts, safety holds)

An org reads only its own lists: another org's path is 403 even with valid credentials, a
missing or wrong credential 401.  Responses carry a strong ETag (SHA-256 of the body); a
request whose If-None-Match names it gets 304 with no body, so hourly pollers cost nothing.
Files are served as last published by egress/sinks/subscriber.py (the safety limit's held
renders never reach here).
"""

from __future__ import annotations

import hashlib
import re
import ssl
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from egress.credentials import CredentialStore, RateLimited
from stixbus.core.sinks.edl import LISTS

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_MISP_FILE = re.compile(rf"^(manifest|{_UUID})\.json$")
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="stixbus", charset="UTF-8"'}


class _Cache:
    """File body and ETag, re-read when the file's (mtime, size, inode) changes."""

    def __init__(self) -> None:
        self._entries: dict[Path, tuple[tuple[int, int, int], bytes, str]] = {}

    def get(self, path: Path) -> tuple[bytes, str] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._entries.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1], cached[2]
        try:
            body = path.read_bytes()
        except OSError:
            return None
        etag = '"' + hashlib.sha256(body).hexdigest()[:40] + '"'
        self._entries[path] = (stamp, body, etag)
        return body, etag


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = [c.strip().removeprefix("W/") for c in if_none_match.split(",")]
    return "*" in candidates or etag in candidates


def make_app(root: Path, orgs: set[str], credentials: CredentialStore) -> web.Application:
    cache = _Cache()

    async def authorised(request: web.Request, org: str) -> None:
        try:
            who = await credentials.authenticate(request.headers.get("Authorization"))
        except RateLimited as exc:
            raise web.HTTPTooManyRequests(text=f"{exc}\n") from None
        if who is None:
            raise web.HTTPUnauthorized(
                headers=_CHALLENGE, text="credentials missing or wrong (the TAXII credentials)\n"
            )
        if who != org or org not in orgs:
            raise web.HTTPForbidden(
                text=f"org {who!r} may read only /lists/{who}/ and /misp/{who}/\n"
            )

    def serve(request: web.Request, path: Path, content_type: str) -> web.Response:
        found = cache.get(path)
        if found is None:
            raise web.HTTPServiceUnavailable(
                text="not published yet (the sink is still reading the delivery topic)\n",
                headers={"Retry-After": "10"},
            )
        body, etag = found
        headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
        if _matches(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=headers)

    async def lists(request: web.Request) -> web.Response:
        org, name = request.match_info["org"], request.match_info["name"]
        await authorised(request, org)
        if name not in LISTS:
            raise web.HTTPNotFound(text=f"no list {name!r}: use one of {', '.join(LISTS)}\n")
        return serve(request, root / org / f"{name}.txt", "text/plain")

    async def misp(request: web.Request) -> web.Response:
        org, name = request.match_info["org"], request.match_info["file"]
        await authorised(request, org)
        if not _MISP_FILE.match(name):
            raise web.HTTPNotFound(text="a MISP feed has manifest.json and <event uuid>.json\n")
        return serve(request, root / org / "misp" / name, "application/json")

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest())
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    app = web.Application()
    app.router.add_get("/lists/{org}/{name}.txt", lists)
    app.router.add_get("/misp/{org}/{file}", misp)
    app.router.add_get("/metrics", metrics)
    return app


def ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


async def start(
    app: web.Application, host: str, port: int, tls: ssl.SSLContext | None
) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, int(bound)
