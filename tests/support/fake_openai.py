"""A loopback stand-in for the OpenAI API: Chat Completions (plain and streamed) and Responses.

Every reply reports the same usage: 1200 prompt tokens of which 200 cached, 300 completion tokens.
When the request offers tools and carries no tool result yet, the reply calls the first tool with
TOOL_ARGUMENTS; otherwise it is the final ANSWER. An agent with one tool so makes exactly two model
calls: a tool call, then the answer.
"""

from __future__ import annotations

import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "gpt-4o-2024-08-06"
PROMPT_TOKENS = 1200
COMPLETION_TOKENS = 300
CACHED_TOKENS = 200
ANSWER = "Paris is the capital of France."
TOOL_ARGUMENTS = {"city": "Paris"}
CREATED = 1_735_689_600

CHAT_USAGE = {
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
}
RESPONSES_USAGE = {
    "input_tokens": PROMPT_TOKENS,
    "input_tokens_details": {"cached_tokens": CACHED_TOKENS},
    "output_tokens": COMPLETION_TOKENS,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
}


def _tool_name(tool: dict) -> str:
    """A tool's name in either API's tool list (Chat nests it under `function`)."""
    return tool.get("function", {}).get("name") or tool.get("name") or ""


def wants_tool_call(request: dict) -> bool:
    """True when the model should call a tool: tools are offered and no tool result came back yet."""
    if not request.get("tools"):
        return False
    messages = request.get("messages")
    if isinstance(messages, list):
        return not any(isinstance(m, dict) and m.get("role") == "tool" for m in messages)
    items = request.get("input")
    return not (
        isinstance(items, list)
        and any(isinstance(item, dict) and item.get("type") == "function_call_output" for item in items)
    )


class FakeOpenAI:
    """`with FakeOpenAI() as api:` serves on 127.0.0.1:<free port>; `api.base_url` goes to openai.OpenAI."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict]] = []
        self._ids = itertools.count(1)
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
                path = self.path.rstrip("/")
                if path.endswith("/chat/completions"):
                    if document.get("stream"):
                        self._stream(owner.chat_chunks(document))
                    else:
                        self._reply(200, owner.chat_completion(document))
                elif path.endswith("/responses"):
                    self._reply(200, owner.response(document))
                else:
                    self._reply(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

            def _reply(self, status: int, document: dict) -> None:
                self._send(status, "application/json", json.dumps(document).encode())

            def _stream(self, chunks: list[dict]) -> None:
                events = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
                self._send(200, "text/event-stream", events.encode())

            def _send(self, status: int, content_type: str, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("x-request-id", "req_agentopz_test")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-openai", daemon=True)

    def _tool_call(self, request: dict) -> tuple[str, str, str]:
        """(call id, tool name, JSON arguments) of the call this reply makes."""
        return f"call_agentopz_{next(self._ids)}", _tool_name(request["tools"][0]), json.dumps(TOOL_ARGUMENTS)

    def chat_completion(self, request: dict) -> dict:
        if wants_tool_call(request):
            call_id, name, arguments = self._tool_call(request)
            message = {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}],
            }
            finish_reason = "tool_calls"
        else:
            message = {"role": "assistant", "content": ANSWER, "refusal": None}
            finish_reason = "stop"
        return {
            "id": f"chatcmpl-agentopz-{next(self._ids):04d}",
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "system_fingerprint": "fp_agentopz",
            "service_tier": "default",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": CHAT_USAGE,
        }

    def chat_chunks(self, request: dict) -> list[dict]:
        """The same reply as chat.completion.chunk objects; usage in a last chunk when asked for, as OpenAI does."""
        completion_id = f"chatcmpl-agentopz-{next(self._ids):04d}"

        def chunk(delta: dict | None, finish_reason: str | None = None, **extra) -> dict:
            choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": MODEL,
                "system_fingerprint": "fp_agentopz",
                "choices": choices,
                **extra,
            }

        if wants_tool_call(request):
            call_id, name, arguments = self._tool_call(request)
            opening = {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
            chunks = [
                chunk({"role": "assistant", "content": None, "tool_calls": [opening]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}),
                chunk({}, "tool_calls"),
            ]
        else:
            head, tail = ANSWER.split(" ", 1)
            chunks = [
                chunk({"role": "assistant", "content": ""}),
                chunk({"content": head + " "}),
                chunk({"content": tail}),
                chunk({}, "stop"),
            ]
        if (request.get("stream_options") or {}).get("include_usage"):
            chunks.append(chunk(None, usage=CHAT_USAGE))
        return chunks

    def response(self, request: dict) -> dict:
        """A Responses API `response` object."""
        if wants_tool_call(request):
            call_id, name, arguments = self._tool_call(request)
            output = [
                {
                    "type": "function_call",
                    "id": f"fc_agentopz_{next(self._ids)}",
                    "call_id": call_id,
                    "name": name,
                    "arguments": arguments,
                    "status": "completed",
                }
            ]
        else:
            output = [
                {
                    "type": "message",
                    "id": f"msg_agentopz_{next(self._ids)}",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": ANSWER, "annotations": []}],
                }
            ]
        return {
            "id": f"resp_agentopz_{next(self._ids):04d}",
            "object": "response",
            "created_at": CREATED,
            "status": "completed",
            "model": MODEL,
            "output": output,
            "usage": RESPONSES_USAGE,
            "parallel_tool_calls": True,
            "tool_choice": request.get("tool_choice", "auto"),
            "tools": request.get("tools", []),
            "text": {"format": {"type": "text"}},
            "error": None,
            "incomplete_details": None,
            "instructions": request.get("instructions"),
            "metadata": {},
            "temperature": 1.0,
            "top_p": 1.0,
            "truncation": "disabled",
            "previous_response_id": None,
            "reasoning": None,
            "store": True,
            "max_output_tokens": None,
            "service_tier": "default",
            "user": None,
        }

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
