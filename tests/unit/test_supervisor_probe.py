"""The worker probe (requests, no urllib): any status is an answer, silence is None."""

from __future__ import annotations

import socket

from stixbus.settings import Settings
from stixbus.supervisor import http_probe, readiness
from tests.helpers.http import scripted_server


def test_probe_returns_error_statuses_with_their_body() -> None:
    with scripted_server([(503, {}, b'{"ready": false}')]) as server:
        assert http_probe(server.url + "/readyz") == (503, b'{"ready": false}')
        assert http_probe(server.url + "/readyz") == (200, b"ok")


def test_readiness_reads_a_not_ready_answer_and_none_when_nobody_listens() -> None:
    with scripted_server([(503, {}, b'{"ready": false, "why": "starting"}')]) as server:
        settings = Settings(web_port=server.server_port)
        assert readiness(settings) == {"ready": False, "why": "starting"}
        assert readiness(settings) is None  # 200 "ok" is not JSON
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert readiness(Settings(web_port=port)) is None
