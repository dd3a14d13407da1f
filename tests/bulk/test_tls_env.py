"""The connection's ``verify`` beats REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE; proxies still come from the
environment (issue 8, item 17). A real TLS server on 127.0.0.1 with a throw-away certificate."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import certifi
import pytest

from airflow_provider_smart.sessions import new_session, token_free_copy


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(https URL, path of the PEM certificate that verifies it)."""
    from airflow_provider_smart.testing.tls import make_tls

    files = make_tls(tmp_path)
    cert_path = files.ca
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.socket = files.server_context().wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_port}/", str(cert_path)
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_the_connections_ca_bundle_beats_the_environments(
    tls_server: tuple[str, str], monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    url, ca = tls_server
    monkeypatch.setenv(variable, certifi.where())  # a bundle that does not know our CA
    session = new_session(verify=ca)
    assert session.get(url, timeout=5).text == "ok"  # today: SSLError (the environment's bundle won)
    assert token_free_copy(session).get(url, timeout=5).text == "ok"  # the file session too


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verify_false_is_not_overridden_by_the_environment(
    tls_server: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = tls_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    assert new_session(verify=False).get(url, timeout=5).text == "ok"


def test_the_environments_bundle_still_applies_when_the_connection_left_verify_alone(
    tls_server: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ca = tls_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca)  # e.g. a corporate CA installed for every tool
    assert new_session().get(url, timeout=5).text == "ok"


def test_proxies_still_come_from_the_environment(hostile_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = hostile_server(lambda h: h.reply(200, "via proxy"))
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    session = new_session(verify="/nonexistent/ca.pem")
    assert session.get("http://fhir.invalid/fhir/metadata", timeout=5).text == "via proxy"
    assert proxy.hits[-1][2] == "http://fhir.invalid/fhir/metadata"
