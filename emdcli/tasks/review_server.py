"""The local web server of ``emdcli review``: one page, a small JSON API, and the images by number.

The standard library's threading HTTP server serves it: one page and a few JSON calls for one person
on this machine need no framework, and emdcli's core install stays as it is.

Safe by default: it binds to 127.0.0.1; every request must carry the random token of the URL it
printed (``?token=``), else 403, so that another local user or a web page in the browser cannot drive
it; images are served by number only (no path from a request reaches the file system); writes happen
only through :class:`~emdcli.tasks.review.Review`, under the support folder; a malformed request gets
400 (a body over :data:`MAX_BODY` bytes 413) and changes nothing.
"""

from __future__ import annotations

import hmac
import json
import mimetypes
import re
import secrets
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import UsageError
from .review import Review

__all__ = ["MAX_BODY", "ReviewServer"]

#: The largest request body accepted, in bytes (a decision is well under 1 KB).
MAX_BODY = 16 * 1024
_QUERY_IMAGE = re.compile(r"/img/q/(\d{1,9})")
_SUPPORT_IMAGE = re.compile(r"/img/s/(\d{1,6})/(\d{1,9})")


class ReviewServer:
    """Serves ``review`` on 127.0.0.1:``port`` (0: a free one) with a random ``token``."""

    def __init__(self, review: Review, port: int = 0, token: str | None = None) -> None:
        self.review = review
        self.token = token or secrets.token_urlsafe(24)
        handler = type("Handler", (_Handler,), {"server_state": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        """The page's address, token included."""
        return f"http://127.0.0.1:{self.port}/?token={self.token}"

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> ReviewServer:
        """Serve from a thread (tests, scripts); :meth:`stop` ends it."""
        self._thread = threading.Thread(target=self.serve_forever, name="emdcli-review", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def state(self) -> dict[str, Any]:
        """What the page shows: the classes and their examples, the items left (least certain first),
        the suggested ones, and how many are decided."""
        review = self.review
        items = review.items()
        return {
            "classes": list(review.classes),
            "examples": {c: len(review.examples.get(c, [])) for c in review.classes},
            "items": [it.to_json() for it in items],
            "suggested": review.suggest(min(5, len(items)), items) if items else [],
            "decided": len(review.decided),
            "journal": str(review.journal.path),
        }


class _Handler(BaseHTTPRequestHandler):
    server_state: ReviewServer
    server_version = "emdcli-review"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        return None  # quiet: the terminal shows the URL and nothing per request

    # the checks -----------------------------------------------------------------------------------------

    def _authorised(self) -> bool:
        given = parse_qs(urlsplit(self.path).query).get("token", [""])[0]
        return hmac.compare_digest(given.encode(), self.server_state.token.encode())

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self'; style-src 'unsafe-inline'; "
                         "script-src 'unsafe-inline'; connect-src 'self'")  # fmt: skip
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json(status, {"error": message})

    # the routes -----------------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        if not self._authorised():
            return self._error(HTTPStatus.FORBIDDEN, "a token is needed: open the URL emdcli review printed")
        route = urlsplit(self.path).path
        if route == "/":
            from ..render.review_page import review_page

            return self._send(HTTPStatus.OK, review_page().encode(), "text/html; charset=utf-8")
        if route == "/api/state":
            return self._json(HTTPStatus.OK, self.server_state.state())
        if m := _QUERY_IMAGE.fullmatch(route):
            return self._image(self._query_path(int(m[1])))
        if m := _SUPPORT_IMAGE.fullmatch(route):
            return self._image(self._support_path(int(m[1]), int(m[2])))
        return self._error(HTTPStatus.NOT_FOUND, "no such page")

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        if not self._authorised():
            return self._error(HTTPStatus.FORBIDDEN, "a token is needed: open the URL emdcli review printed")
        route = urlsplit(self.path).path
        if route not in ("/api/decide", "/api/undo"):
            return self._error(HTTPStatus.NOT_FOUND, "no such call")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return self._error(HTTPStatus.BAD_REQUEST, "a bad Content-Length")
        if length > MAX_BODY or length < 0:
            return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a body of at most {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self._error(HTTPStatus.BAD_REQUEST, "the body is not JSON")
        review = self.server_state.review
        try:
            if route == "/api/undo":
                review.undo()
            else:
                if not isinstance(body, dict) or not isinstance(body.get("id"), int):
                    return self._error(HTTPStatus.BAD_REQUEST, "give {id: number, action: text, label: text}")
                label = body.get("label")
                if label is not None and not isinstance(label, str):
                    return self._error(HTTPStatus.BAD_REQUEST, "label must be text")
                review.decide(body["id"], str(body.get("action")), label)
        except UsageError as exc:
            return self._error(HTTPStatus.CONFLICT, exc.message)
        return self._json(HTTPStatus.OK, self.server_state.state())

    # the images -----------------------------------------------------------------------------------------

    def _query_path(self, index: int) -> Path | None:
        queries = self.server_state.review.queries
        return queries[index] if index < len(queries) else None

    def _support_path(self, cls: int, index: int) -> Path | None:
        review = self.server_state.review
        classes = review.classes
        if cls >= len(classes):
            return None
        examples = review.examples.get(classes[cls], [])
        return examples[index][0] if index < len(examples) else None

    def _image(self, path: Path | None) -> None:
        if path is None:
            return self._error(HTTPStatus.NOT_FOUND, "no such image")
        try:
            data = path.read_bytes()
        except OSError:
            return self._error(HTTPStatus.NOT_FOUND, "the image is gone")
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return self._send(HTTPStatus.OK, data, kind if kind.startswith("image/") else "application/octet-stream")
