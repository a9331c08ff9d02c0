"""A loopback stand-in for the OpenAI Chat Completions API: one fixed chat.completion for every request."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "gpt-4o-2024-08-06"
PROMPT_TOKENS = 1200
COMPLETION_TOKENS = 300
CACHED_TOKENS = 200
ANSWER = "Paris is the capital of France."

COMPLETION = {
    "id": "chatcmpl-agentopz-test-0001",
    "object": "chat.completion",
    "created": 1_735_689_600,
    "model": MODEL,
    "system_fingerprint": "fp_agentopz",
    "service_tier": "default",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": ANSWER, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
}


class FakeOpenAI:
    """`with FakeOpenAI() as api:` serves on 127.0.0.1:<free port>; `api.base_url` goes to openai.OpenAI."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                try:
                    document = json.loads(body or b"{}")
                except ValueError:
                    document = {}
                owner.requests.append(("POST", self.path, document))
                if self.path.rstrip("/").endswith("/chat/completions"):
                    self._reply(200, COMPLETION)
                else:
                    self._reply(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

            def _reply(self, status: int, document: dict) -> None:
                payload = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("x-request-id", "req_agentopz_test")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-openai", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
