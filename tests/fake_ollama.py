"""A small local HTTP server speaking Ollama's ``/api/chat`` and ``/api/tags`` JSON shapes.

The only fake the test suite allows: it stands in for an Ollama server (which cannot run here)
at the HTTP boundary, so the real ``ollama`` client, timeouts and error handling are exercised.
Classification is a keyword rule, so answers are deterministic. Behaviour is configurable:

* ``mode``: ``ok`` | ``malformed`` (content not JSON) | ``short`` (a batch reply missing its last
  result) | ``reordered`` (batch results in reverse order, ids intact) | ``wrong_ids`` |
  ``error`` (HTTP 500 ``{"error": ...}``);
* ``script``: modes consumed one per ``/api/chat`` request before ``mode`` applies;
* ``models``: what ``/api/tags`` lists; a chat for another model gets Ollama's 404;
* ``delay``: seconds to wait before answering a chat (timeouts).

``/api/pull`` adds a model to ``models`` (streamed NDJSON progress as Ollama sends it, or one
object with ``"stream": false``), so ``ollama pull`` works against it; with ``models_file`` the
list survives a restart. ``python tests/fake_ollama.py HOST:PORT [MODELS_FILE]`` serves it on
its own (deploy/local-images/ollama.Dockerfile: the compose stack's Ollama where no Ollama
image can be had).

Every chat request body is recorded in ``chats`` (and ``/api/tags`` calls counted) so tests can
assert on exactly what reached the server.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

POSITIVE_WORDS = {"love", "great", "good", "happy", "awesome", "excellent", "wonderful", "best"}
NEGATIVE_WORDS = {"hate", "bad", "awful", "terrible", "sad", "worst", "horrible", "broken"}


def keyword_label(text: str) -> tuple[str, float]:
    """The fake model's verdict: counts positive and negative keywords."""
    words = {w.strip(".,!?;:'\"").lower() for w in text.split()}
    pos, neg = len(words & POSITIVE_WORDS), len(words & NEGATIVE_WORDS)
    if pos > neg:
        return "positive", 0.8
    if neg > pos:
        return "negative", -0.8
    return "neutral", 0.0


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class FakeOllama:
    """Run with ``with FakeOllama() as server:``; ``server.url`` is its OLLAMA_HOST."""

    def __init__(self, models: tuple[str, ...] = ("qwen2.5:1.5b",), port: int = 0,
                 host: str = "127.0.0.1", models_file: str | None = None) -> None:
        self.models = list(models)
        self.models_file = models_file
        if models_file:
            try:
                with open(models_file, encoding="utf-8") as saved:
                    self.models = list(json.load(saved))
            except (OSError, ValueError):
                pass
        self._host = host
        self.mode = "ok"
        self.script: list[str] = []
        self.delay = 0.0
        self.chats: list[dict[str, Any]] = []
        self.tags_calls = 0
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._port = port
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeOllama:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with fake._lock:
                    fake._connections.add(self.connection)

            def finish(self) -> None:
                with fake._lock:
                    fake._connections.discard(self.connection)
                super().finish()

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                if self.path != "/api/tags":
                    self._send(404, "404 page not found", "text/plain")
                    return
                with fake._lock:
                    fake.tags_calls += 1
                self._send(200, {"models": [fake._model_entry(m) for m in fake.models]})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path not in ("/api/chat", "/api/pull"):
                    self._send(404, "404 page not found", "text/plain")
                    return
                try:
                    request = json.loads(raw)
                except ValueError:
                    self._send(400, {"error": "invalid JSON"})
                    return
                if self.path == "/api/pull":
                    statuses = fake._pull(request)
                    if request.get("stream", True) is False:
                        self._send(200, statuses[-1])
                    else:
                        self._send(200, "".join(json.dumps(s) + "\n" for s in statuses),
                                   "application/x-ndjson")
                    return
                status, body = fake._chat(request)
                self._send(status, body)

            def _send(self, status: int, body: Any, ctype: str = "application/json; charset=utf-8") -> None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout tests)

            def log_message(self, *_args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer((self._host, self._port), Handler)
        self.server.daemon_threads = True
        self._port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        with self._lock:  # like a dead server: kept-alive client connections die too
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._connections.clear()

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- behaviour ---------------------------------------------------------------------------
    @staticmethod
    def _model_entry(name: str) -> dict[str, Any]:
        return {"name": name, "model": name, "modified_at": "2025-01-01T00:00:00.000000000Z",
                "size": 986061892, "digest": "a" * 64,
                "details": {"parent_model": "", "format": "gguf", "family": "qwen2",
                            "families": ["qwen2"], "parameter_size": "1.5B",
                            "quantization_level": "Q4_K_M"}}

    def _pull(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        name = str(request.get("model") or request.get("name") or "")
        if not name:
            return [{"error": "model is required"}]
        with self._lock:
            if name not in self.models:
                self.models.append(name)
            if self.models_file:
                with open(self.models_file, "w", encoding="utf-8") as saved:
                    json.dump(self.models, saved)
        return [{"status": "pulling manifest"}, {"status": "verifying sha256 digest"},
                {"status": "writing manifest"}, {"status": "success"}]

    def _chat(self, request: dict[str, Any]) -> tuple[int, Any]:
        with self._lock:
            self.chats.append(request)
            mode = self.script.pop(0) if self.script else self.mode
            delay = self.delay
        if delay:
            time.sleep(delay)
        model = request.get("model", "")
        if model not in self.models:
            return 404, {"error": f'model "{model}" not found, try pulling it first'}
        if mode == "error":
            return 500, {"error": "llama runner process has terminated: exit status 2"}
        messages = request.get("messages") or []
        data = messages[-1].get("content", "") if messages else ""
        schema = request.get("format")
        if isinstance(schema, dict) and schema.get("type") == "array":
            content = self._batch_reply(data, mode)
        elif mode == "malformed":
            content = '{"label": "posit'
        else:
            label, score = keyword_label(data)
            content = json.dumps({"label": label, "score": score})
        if mode == "malformed":
            content = "Sure! Here is the sentiment: positive"
        return 200, {
            "model": model, "created_at": _now(),
            "message": {"role": "assistant", "content": content},
            "done": True, "done_reason": "stop", "total_duration": 123456789,
            "load_duration": 1234567, "prompt_eval_count": 42, "prompt_eval_duration": 2345678,
            "eval_count": 12, "eval_duration": 3456789,
        }

    @staticmethod
    def _batch_reply(data: str, mode: str) -> str:
        items = json.loads(data)
        results = []
        for item in items:
            label, score = keyword_label(item["text"])
            results.append({"id": item["id"], "label": label, "score": score})
        if mode == "short":
            results = results[:-1]
        elif mode == "reordered":
            results = list(reversed(results))
        elif mode == "wrong_ids":
            results = [{**r, "id": r["id"] + 100} for r in results]
        return json.dumps(results)

    def user_texts(self) -> list[str]:
        """Every user-message content received, in order."""
        return [m["content"] for c in self.chats for m in c.get("messages", []) if m.get("role") == "user"]


if __name__ == "__main__":
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # as a container's PID 1
    host, _, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:11434").rpartition(":")
    server = FakeOllama(models=(), host=host or "0.0.0.0", port=int(port),  # noqa: S104
                        models_file=sys.argv[2] if len(sys.argv) > 2 else None).start()
    assert server.thread is not None
    try:
        server.thread.join()
    except (KeyboardInterrupt, SystemExit):
        server.stop()
