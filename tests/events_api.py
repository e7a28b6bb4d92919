"""A scripted Stripe Events API on a local port: the pages a test chooses, in the documented
shape (``{"object": "list", "data": [...], "has_more": ..., "url": "/v1/events"}``), for what
no fake Stripe does on request (a page served again, an entry that is not an event).

The ``stripe`` client talks to it as to Stripe (``API_BASE``); each request's query is kept.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

#: Given the request's query (Stripe's form encoding, decoded), the page to answer with.
Pages = Callable[[dict[str, list[str]]], dict[str, Any]]


def page(events: list[Any], *, has_more: bool = False) -> dict[str, Any]:
    return {"object": "list", "data": events, "has_more": has_more, "url": "/v1/events"}


class EventsAPI:
    def __init__(self, pages: Pages) -> None:
        self.queries: list[dict[str, list[str]]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                api.queries.append(query)
                body = json.dumps(pages(query)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
