"""A small local stand-in for the Hugging Face hub's file endpoint, for store tests.

It serves `/{repo_id}/resolve/{revision}/{path}` for HEAD and GET with the headers
huggingface_hub 2.x reads (`X-Repo-Commit`, `ETag`, `Content-Length`), honours
`Range: bytes=N-` with a 206 answer so that a dropped download can resume, and answers
404 with `X-Error-Code` like the real hub. Every request is logged for assertions.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-$")


@dataclass
class Request:
    """One request the fake hub received."""

    method: str
    path: str
    range: str | None


@dataclass
class FakeHub:
    """The served files and the switches tests flip.

    Attributes:
        files: (repo_id, path in repo) -> bytes served.
        truncate_once: path in repo -> byte count after which the first GET of that file
            is cut off (the connection closes mid-body).
        status: When set, every request is answered with this HTTP status and no body.
        requests: Every request received, in order.
    """

    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    truncate_once: dict[str, int] = field(default_factory=dict)
    status: int | None = None
    requests: list[Request] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, repo_id: str, path: str, content: bytes) -> None:
        self.files[(repo_id, path)] = content

    def downloads(self, path: str) -> list[Request]:
        """The GET requests for one file."""
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + path)]

    def start(self) -> None:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_HEAD(self) -> None:
                self._answer(with_body=False)

            def do_GET(self) -> None:
                self._answer(with_body=True)

            def _answer(self, *, with_body: bool) -> None:
                hub.requests.append(Request(self.command, self.path, self.headers.get("Range")))
                if hub.status is not None:
                    self.send_response(hub.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                match = _RESOLVE.match(self.path.split("?")[0])
                if match is None:
                    self._not_found("RepoNotFound")
                    return
                repo, path = match["repo"], match["path"]
                if not any(known == repo for known, _ in hub.files):
                    self._not_found("RepoNotFound")
                    return
                content = hub.files.get((repo, path))
                if content is None:
                    self._not_found("EntryNotFound")
                    return
                start = 0
                range_match = _RANGE.match(self.headers.get("Range") or "")
                if range_match is not None and with_body:
                    start = int(range_match[1])
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(content) - start))
                if start:
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}"
                    )
                self.end_headers()
                if not with_body:
                    return
                body = content[start:]
                cut = hub.truncate_once.pop(path, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def _not_found(self, code: str) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(timeout=5)
        self._server = None
