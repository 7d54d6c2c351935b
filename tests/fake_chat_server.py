"""A real HTTP chat-completions server for tests: 127.0.0.1, a free port, stdlib only.

``FakeChatServer`` speaks enough of the OpenAI / together chat-completions wire format for the
real SDKs to talk to it through ``base_url``. It answers ``POST .../chat/completions`` with
deterministic, distinct samples (``"<last message content>#<k>"``, k counting per prompt from
0, like :class:`cachesaver.models.scripted.ScriptedModel`), ``GET .../models`` with one model
and ``GET .../files`` with an empty list.

What it records: every chat request body in arrival order (``requests``), every request's
headers (``headers``) and path with its query string (``paths``), the paths of non-chat requests (``other_paths``), the number of chat
requests answered successfully (``completed``) and the peak number of chat requests being
handled at once (``peak_in_flight``).

Fault injection: ``fail_next(status, times=..., headers=...)`` answers the next chat requests
with an error status (for example a burst of 503s, or a 429 with ``Retry-After``);
``drop_next(times=...)`` closes the connection without answering; ``slow_next(delay_s,
times=...)`` answers the next chat requests normally, but only after ``delay_s`` (so a client
with a shorter time-out gives up, and one without succeeds); ``malformed_next(kind,
times=...)`` answers HTTP 200 with a body that is no chat completion (JSON cut off, or an HTML
page); ``fail_when(predicate)``
fails every request whose body matches. ``hold_until(k, total=t)`` makes each chat request
wait until k are in flight (or all t expected requests have arrived), so a test can observe
that a client lets k run at once without relying on timing; ``latency_s`` keeps every chat
request in flight a little longer, so a client that lets too many run shows it.

Every chat answer, success or error, carries an ``x-request-id: req-fake-<k>`` header, k
counting chat requests from 1 in arrival order (the provider's request id the SDKs read).

Usage accounting: ``prompt_tokens`` is the number of whitespace-separated words in all message
contents; each choice costs ``tokens_per_choice`` completion tokens.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Fault", "FakeChatServer"]


@dataclass(frozen=True)
class Fault:
    """How to answer one chat request instead of succeeding.

    ``status=None`` closes the connection without sending a response; a status below 400
    answers normally, or, when ``body`` is given, with exactly those bytes (a malformed reply)
    under ``content_type``. ``delay_s`` waits that long first (or until the server stops), to make a
    client time out.
    """

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    message: str = "injected failure"
    code: str | None = None
    delay_s: float = 0.0
    body: bytes | None = None
    content_type: str = "application/json"


def prompt_words(messages: list[dict[str, Any]]) -> int:
    """The fake's prompt-token count: words in every message's content."""
    return sum(len(str(m.get("content", "")).split()) for m in messages)


def last_content(messages: list[dict[str, Any]]) -> str:
    return str(messages[-1].get("content", "")) if messages else ""


class FakeChatServer:
    """A threaded fake chat-completions server; use as a context manager or call start/stop."""

    def __init__(self, *, tokens_per_choice: int = 3, latency_s: float = 0.0, hold_timeout_s: float = 10.0) -> None:
        self.tokens_per_choice = tokens_per_choice
        self.latency_s = latency_s
        self.hold_timeout_s = hold_timeout_s
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.other_paths: list[str] = []
        self.completed = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self._faults: list[Fault] = []
        self._predicates: list[Callable[[dict[str, Any]], Fault | None]] = []
        self._counters: dict[str, int] = {}
        self._hold_target: int | None = None
        self._hold_total: int | None = None
        self._hold_base = 0
        self._stopping = False
        self._condition = threading.Condition()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def root_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the server is not running; call start() first")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def openai_base_url(self) -> str:
        """The base_url an OpenAI client needs (the SDK appends ``/chat/completions``)."""
        return self.root_url + "/v1"

    @property
    def together_base_url(self) -> str:
        """The base_url a together client needs (the SDK appends ``/v1/chat/completions``)."""
        return self.root_url

    def start(self) -> FakeChatServer:
        handler = _make_handler(self)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), name="fake-chat-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._condition:
            self._stopping = True
        self.release()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = None
        self._thread = None

    def __enter__(self) -> FakeChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting -------------------------------------------------------------------------
    def fail_next(
        self, status: int, *, times: int = 1, headers: dict[str, str] | None = None,
        message: str = "injected failure", code: str | None = None,
    ) -> None:
        """Answer the next ``times`` chat requests with HTTP ``status``."""
        with self._condition:
            self._faults.extend([Fault(status, dict(headers or {}), message, code)] * times)

    def drop_next(self, *, times: int = 1, delay_s: float = 0.0) -> None:
        """Close the connection of the next ``times`` chat requests without answering (after
        ``delay_s``, so a client with a shorter time-out gives up first)."""
        with self._condition:
            self._faults.extend([Fault(None, delay_s=delay_s)] * times)

    def slow_next(self, delay_s: float, *, times: int = 1) -> None:
        """Answer the next ``times`` chat requests normally, after ``delay_s`` seconds each."""
        with self._condition:
            self._faults.extend([Fault(200, delay_s=delay_s)] * times)

    def malformed_next(self, kind: str = "truncated", *, times: int = 1) -> None:
        """Answer the next ``times`` chat requests with HTTP 200 and a body that is not a chat
        completion: ``"truncated"`` (a JSON completion cut off midway) or ``"html"`` (an HTML
        page, as a proxy or gateway sends)."""
        if kind == "truncated":
            fault = Fault(200, body=b'{"id": "chatcmpl-cut", "object": "chat.completion", "choices": [{"ind')
        elif kind == "html":
            fault = Fault(200, body=b"<html><body><h1>Bad Gateway</h1></body></html>", content_type="text/html")
        else:
            raise ValueError(f"kind must be 'truncated' or 'html', got {kind!r}")
        with self._condition:
            self._faults.extend([fault] * times)

    def fail_when(self, predicate: Callable[[dict[str, Any]], Fault | None]) -> None:
        """Fail every chat request whose body makes ``predicate`` return a Fault."""
        with self._condition:
            self._predicates.append(predicate)

    def hold_until(self, in_flight: int, *, total: int | None = None) -> None:
        """Make each chat request wait until ``in_flight`` requests are being handled, or until
        ``total`` requests have arrived since this call (so the last few are not held)."""
        with self._condition:
            self._hold_target = in_flight
            self._hold_total = total
            self._hold_base = len(self.requests)

    def release(self) -> None:
        """Stop holding requests."""
        with self._condition:
            self._hold_target = None
            self._condition.notify_all()

    @property
    def calls(self) -> int:
        """Chat requests received, failed or not."""
        return len(self.requests)

    # -- behaviour -------------------------------------------------------------------------
    def _enter(self, body: dict[str, Any], headers: dict[str, str], path: str) -> tuple[Fault | None, str]:
        """Record a chat request; return how to fail it (None: succeed) and its x-request-id."""
        with self._condition:
            self.requests.append(body)
            self.headers.append(headers)
            self.paths.append(path)
            provider_id = f"req-fake-{len(self.requests)}"
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            self._condition.notify_all()
            if self._hold_target is not None:
                self._condition.wait_for(self._hold_over, timeout=self.hold_timeout_s)
            if self._faults:
                return self._faults.pop(0), provider_id
            for predicate in self._predicates:
                fault = predicate(body)
                if fault is not None:
                    return fault, provider_id
            return None, provider_id

    def _pause(self, seconds: float) -> None:
        with self._condition:
            self._condition.wait_for(lambda: self._stopping, timeout=seconds)

    def _hold_over(self) -> bool:
        if self._hold_target is None or self.in_flight >= self._hold_target:
            return True
        return self._hold_total is not None and len(self.requests) - self._hold_base >= self._hold_total

    def _leave(self, succeeded: bool) -> None:
        with self._condition:
            self.in_flight -= 1
            if succeeded:
                self.completed += 1

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages") or []
        n = int(body.get("n") or 1)
        tag = last_content(messages)
        with self._condition:
            start = self._counters.get(tag, 0)
            self._counters[tag] = start + n
            sequence = len(self.requests)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": f"{tag}#{start + i}"},
                "finish_reason": "stop",
                "logprobs": None,
            }
            for i in range(n)
        ]
        prompt_tokens = prompt_words(messages)
        completion_tokens = self.tokens_per_choice * n
        return {
            "id": f"chatcmpl-fake-{sequence}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": body.get("model", ""),
            "prompt": [],
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _make_handler(server: FakeChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 30

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr
            pass

        def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            self._send_raw(status, json.dumps(payload).encode("utf-8"), "application/json", headers)

        def _send_raw(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timed out) first
                self.close_connection = True

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            server.other_paths.append(self.path)
            if self.path.rstrip("/").endswith("/models"):
                self._send_json(
                    200,
                    {"object": "list", "data": [
                        {"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}
                    ]},
                )
            elif self.path.rstrip("/").endswith("/files"):
                self._send_json(200, {"object": "list", "data": []})
            else:
                self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

        def do_POST(self) -> None:  # noqa: N802 - http.server naming
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if not self.path.partition("?")[0].rstrip("/").endswith("/chat/completions"):
                server.other_paths.append(self.path)
                self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                return
            body = json.loads(raw or b"{}")
            fault, provider_id = server._enter(body, {k.lower(): v for k, v in self.headers.items()}, self.path)
            succeeded = False
            try:
                if server.latency_s:
                    server._pause(server.latency_s)
                if fault is not None and fault.delay_s:
                    server._pause(fault.delay_s)
                if fault is not None and fault.body is not None:
                    self._send_raw(fault.status or 200, fault.body, fault.content_type, {"x-request-id": provider_id})
                    return
                if fault is not None and fault.status is not None and fault.status < 400:
                    fault = None  # a slow success: the delay is over
                if fault is not None and fault.status is None:
                    self.close_connection = True
                    self.connection.shutdown(2)  # drop the connection without an answer
                    return
                if fault is not None:
                    error = {"message": fault.message, "type": "injected", "code": fault.code}
                    self._send_json(fault.status, {"error": error}, {"x-request-id": provider_id, **fault.headers})
                    return
                self._send_json(200, server._completion(body), {"x-request-id": provider_id})
                succeeded = True
            finally:
                server._leave(succeeded)

    return Handler
