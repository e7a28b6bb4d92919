"""The ASGI body guard, under uvicorn: an over-large body is refused before Django reads it.

Without the guard, Django's ASGI handler reads (and spools to disk) the whole
body before the view can refuse it: the sender would get to send all of it.
"""

from __future__ import annotations

import json
import select
import socket
from pathlib import Path

import pytest

from tests.servers import Uvicorn

pytestmark = pytest.mark.servers

LIMIT = 1024 * 1024  # the default MAX_BODY_BYTES
SENT_AT_MOST = 64 * 1024 * 1024
CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def uvicorn(tmp_path_factory):
    # The guard answers before any SQL: a database file that is never migrated will do.
    tmp = tmp_path_factory.mktemp("asgi")
    server = Uvicorn(f"sqlite:///{tmp / 'unused.sqlite3'}", "asgi-guard", workers=1, log_dir=tmp)
    yield server
    server.stop()


def request_head(port: int, headers: str) -> bytes:
    return (
        f"POST /stripe/webhook/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nStripe-Signature: t=1,v1=0\r\n{headers}\r\n"
    ).encode()


def read_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 10:
        part = sock.recv(65536)
        if not part:
            break
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(body[: body.rindex(b"}") + 1])


def test_a_declared_length_over_the_limit_is_refused_before_any_byte_of_body(uvicorn):
    with socket.create_connection(("127.0.0.1", uvicorn.port), timeout=10) as sock:
        sock.sendall(request_head(uvicorn.port, f"Content-Length: {500 * 1024 * 1024}\r\n"))
        # Nothing of the 500 MiB is sent: the answer comes anyway.
        assert read_response(sock) == (413, {"status": "rejected", "error": "body_too_large"})


def test_a_chunked_body_is_cut_off_soon_after_the_limit(uvicorn):
    with socket.create_connection(("127.0.0.1", uvicorn.port), timeout=10) as sock:
        sock.sendall(request_head(uvicorn.port, "Transfer-Encoding: chunked\r\n"))
        sent = 0
        chunk = f"{CHUNK:x}\r\n".encode() + b"x" * CHUNK + b"\r\n"
        while sent < SENT_AT_MOST:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += CHUNK
        answer = read_response(sock)
    assert answer == (413, {"status": "rejected", "error": "body_too_large"})
    # Answered long before the whole body went out (loopback buffers hold a few MiB).
    assert sent < SENT_AT_MOST // 2, sent


def test_other_paths_and_small_bodies_pass_through(uvicorn):
    with socket.create_connection(("127.0.0.1", uvicorn.port), timeout=10) as sock:
        body = b"{}"
        sock.sendall(request_head(uvicorn.port, f"Content-Length: {len(body)}\r\n") + body)
        # The view's own answer: the signature is checked, as for any small body.
        assert read_response(sock) == (400, {"status": "rejected", "error": "invalid_signature"})


def test_the_example_project_is_wrapped():
    asgi = Path(__file__).resolve().parent.parent / "example_project" / "asgi.py"
    assert "WebhookBodyLimit(get_asgi_application())" in asgi.read_text()


def test_a_refused_body_limit_setting_is_left_to_the_view_to_answer():
    # The guard cannot bound by a size that is not one; the view behind it reads the same
    # setting and answers the mistake 503 as JSON (test_views), so the request goes through.
    import asyncio

    from django.test import override_settings

    from stripe_idempotency.asgi import WebhookBodyLimit

    reached = []

    async def app(scope, receive, send):
        reached.append(scope["path"])

    async def nothing():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def ignore(message):
        raise AssertionError(f"The guard answered itself: {message}")

    guard = WebhookBodyLimit(app, path="/stripe/webhook/")
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/stripe/webhook/",
        "headers": [(b"content-length", b"9")],
    }
    with override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_x"], "MAX_BODY_BYTES": "1MB"}):
        asyncio.run(guard(scope, nothing, ignore))
    assert reached == ["/stripe/webhook/"]
