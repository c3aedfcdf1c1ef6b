"""The git smart HTTP bridge: CGI output becomes an HTTP response, Basic credentials are read."""

from __future__ import annotations

import base64

from gitops.api.githttp import parse_cgi, password_of


def test_cgi_status_headers_and_body_are_split() -> None:
    output = (
        b"Status: 403 Forbidden\r\nContent-Type: text/plain\r\nExpires: Fri, 01 Jan 1980 00:00:00 GMT\r\n\r\n"
        b"Service not enabled: 'receive-pack'\n"
    )
    response = parse_cgi(output)
    assert response.status == 403
    assert response.headers == (
        ("Content-Type", "text/plain"),
        ("Expires", "Fri, 01 Jan 1980 00:00:00 GMT"),
    )
    assert response.body == b"Service not enabled: 'receive-pack'\n"


def test_cgi_output_without_status_is_200_and_the_body_is_kept_byte_for_byte() -> None:
    body = b"0000\r\n\r\n\x00\xff pack data"
    response = parse_cgi(b"Content-Type: application/x-git-upload-pack-result\n\n" + body)
    assert response.status == 200
    assert response.body == body


def test_cgi_output_without_headers_is_a_bad_gateway() -> None:
    assert parse_cgi(b"garbage").status == 502


def test_basic_credentials_are_decoded_and_anything_else_refused() -> None:
    encoded = base64.b64encode(b"gitops:to:ken").decode()
    assert password_of(f"Basic {encoded}") == ("gitops", "to:ken")
    assert password_of("Bearer abc") is None
    assert password_of("Basic !!!") is None
    assert password_of("Basic " + base64.b64encode(b"no-colon").decode()) is None
