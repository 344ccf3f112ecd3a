"""The server bounds what it reads: a body over the cap, or an API body without a valid token, is refused before
the body is read (raw sockets against the real uvicorn server, so nothing is sent that the test does not say)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from server_support import running_server

from keyless.server.app import create_app
from keyless.server.limits import MAX_BODY
from keyless.store import Role, Store

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    store = Store.open(f"sqlite:///{Path(tmp_path_factory.mktemp('limits')) / 'keyless.db'}")
    token = store.create_token("admin", Role.ADMIN, "test")[1]
    try:
        with running_server(create_app(store, {})) as base:
            yield base, token
    finally:
        store.close()


def send_head(base: str, head: str, body: bytes = b"") -> tuple[int, dict[str, object]]:
    """Send a request head (and at most `body`, however much the head announces); the status and JSON answer."""
    url = urlsplit(base)
    with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, json.loads(answer.split(b"\r\n\r\n", 1)[1] or b"{}")


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def test_a_huge_body_is_refused_by_its_length_before_anything_is_read(server: tuple[str, str]) -> None:
    base, token = server
    # 100 MB announced, none sent: the answer comes at once, so the server read nothing.
    status, body = send_head(base, f"PUT /api/v1/apps/shop/porter.yaml HTTP/1.1\nHost: x\n"
                                   f"Authorization: Bearer {token}\nContent-Length: 104857600\n"
                                   "Content-Type: application/yaml\n")
    assert status == 413
    assert "too large" in str(body["error"])


def test_an_api_body_without_a_valid_token_is_refused_before_it_is_read(server: tuple[str, str]) -> None:
    base, _ = server
    head = "PUT /api/v1/apps/shop/porter.yaml HTTP/1.1\nHost: x\nContent-Length: 1000\nContent-Type: application/yaml\n"
    status, body = send_head(base, head, b"services:")  # 9 of the 1000 bytes: the server must not wait for more
    assert status == 401
    assert body["error"] == "this API needs a token"
    status, body = send_head(base, head.replace("Host: x\n", "Host: x\nAuthorization: Bearer kl_forged\n"), b"x")
    assert status == 401
    assert body["error"] == "this token is not valid (unknown or revoked)"


def test_a_chunked_body_is_cut_off_at_the_cap(server: tuple[str, str]) -> None:
    base, token = server
    chunk = b"#" * 65536
    body = b"".join(b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(MAX_BODY // len(chunk) + 2)) + b"0\r\n\r\n"
    status, answer = send_head(base, f"PUT /api/v1/apps/shop/porter.yaml HTTP/1.1\nHost: x\n"
                                     f"Authorization: Bearer {token}\nTransfer-Encoding: chunked\n"
                                     "Content-Type: application/yaml\n", body)
    assert status == 413
    assert "too large" in str(answer["error"])


def test_a_body_under_the_cap_with_a_token_reaches_the_route(server: tuple[str, str]) -> None:
    base, token = server
    text = b"name: shop\nservices:\n  - name: api\n    type: web\n"
    status, answer = send_head(base, f"POST /api/v1/apps HTTP/1.1\nHost: x\nAuthorization: Bearer {token}\n"
                                     f"Content-Length: {len(text)}\nContent-Type: application/yaml\n", text)
    assert status == 201, answer
