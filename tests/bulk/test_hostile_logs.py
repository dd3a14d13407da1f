"""Nothing secret in any log at any level: urllib3's and requests' DEBUG lines, the sandbox's access log."""

from __future__ import annotations

import logging

from airflow_provider_smart.bulk import ExportRequest
from airflow_provider_smart.log_redaction import redact_text


def test_a_presigned_download_logs_no_signature_at_debug(sandbox_factory, make_client, tmp_path, caplog) -> None:
    sb = sandbox_factory(redirect_files=True)  # 307 to pre-signed URLs (sig=..., X-Amz-...)
    caplog.set_level(logging.DEBUG)  # every logger: urllib3, requests, the sandbox, ours
    client = make_client(sb)
    status_url = client.kick_off(ExportRequest(resource_types=["Patient"]))
    report = client.download(client.wait(status_url), tmp_path)
    assert report.totals()["lines"] == 20
    token = client.transport.session.auth.get_token().access_token  # what went out in Authorization
    text = "\n".join(f"{r.name}: {r.getMessage()}" for r in caplog.records)
    assert "/presigned/" in text  # the lines are there, the query is not
    assert "urllib3.connectionpool" in text and "airflow_provider_smart.testing.httpd" in text
    for secret in ("sig=", "X-Amz-Expires=", "expires=", token):
        assert secret not in text, secret


def test_redaction_of_query_tokens_authorization_and_passwords() -> None:
    line = 'GET https://u:pw@h/x?access_token=abc&b=2 "Authorization: Bearer eyJabc.def" /p?sig=s1 HTTP/1.1'
    clean = redact_text(line)
    for secret in ("pw", "abc", "eyJabc", "s1"):
        assert secret not in clean
    assert "https://***@h/x?..." in clean and "Bearer ***" in clean
