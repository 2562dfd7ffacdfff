"""A real local HTTP server that speaks OpenAI's chat-completions API, scripted per request, for tests.

The openai client talks to it over TCP exactly as it would to api.openai.com or vLLM, so its retries, timeouts and
error mapping are exercised for real (respx cannot patch the client: it uses httpx2, not httpx).

Behaviours, consumed one per request from `server.script` (then `server.default`):
    ("json", obj)       200, message content = json.dumps(obj)
    ("text", str)       200, message content = str
    ("refusal", str)    200, content None and message.refusal = str
    ("logprobs", [(token, logprob), ...])  200, a one-token reply: content = the first token given, and
                        choices[0].logprobs.content[0].top_logprobs = the pairs given, in that order
    ("status", code)    error `code` with a `retry-after-ms: 10` header, so client retries are quick
    ("sleep", s[, then]) wait s seconds (past the client timeout), then answer with `then` (default: a text reply)
    ("payload", obj)    200 with obj as the whole body (e.g. {"choices": []}, or a choice without "message")
    ("raw", str)        200 with str as the body, sent as JSON although it need not be
    ("error", (code, message))  error `code` whose body's message is `message` (e.g. one that echoes the key)
    callable(body)      called with the request JSON; returns one of the above

Every request body (parsed JSON) is appended to `server.requests`, its headers to `server.headers`. POSTs to vLLM's
`/v1/load_lora_adapter` go to `server.adapter_requests` and get `server.adapter_reply` (status, body), or vLLM's 400
"has already been loaded" for a name asked before; `/v1/unload_lora_adapter` drops a name (404 for one it lacks)
and records it in `server.adapter_unloads`. Use the
`openai_server` fixture (import `openai_server_fixture` into the test module) for a started server.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

USAGE = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}


def completion(body: dict, content: str | None, refusal: str | None = None, logprobs: dict | None = None) -> dict:
    message = {"role": "assistant", "content": content, "refusal": refusal}
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "test"),
        "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": logprobs}],
        "usage": dict(USAGE),
    }


def token_logprobs(top: list[tuple[str, float]]) -> dict:
    """choices[i].logprobs of a one-token reply whose token is top[0], in OpenAI's shape."""

    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    first = entry(*top[0]) | {"top_logprobs": [entry(t, lp) for t, lp in top]}
    return {"content": [first], "refusal": None}


class _Handler(BaseHTTPRequestHandler):
    server: FakeOpenAIServer

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.rstrip("/") == "/v1/load_lora_adapter":  # vLLM's runtime LoRA loading
            body = json.loads(raw)
            self.server.adapter_requests.append(body)
            self.server.adapter_headers.append({k.lower(): v for k, v in self.headers.items()})
            if body["lora_name"] in self.server.loaded_adapters:  # as vLLM: a name is loaded once
                message = f"The lora adapter '{body['lora_name']}' has already been loaded."
                return self._send(400, {"error": {"message": message, "type": "BadRequestError", "code": 400}})
            status, text = self.server.adapter_reply
            if status == 200:
                self.server.loaded_adapters[body["lora_name"]] = body["lora_path"]
            return self._send_bytes(status, text.encode())
        if self.path.rstrip("/") == "/v1/unload_lora_adapter":
            name = json.loads(raw)["lora_name"]
            self.server.adapter_unloads.append(name)
            if self.server.loaded_adapters.pop(name, None) is None:  # as vLLM: NotFound for a name it lacks
                message = f"The lora adapter '{name}' cannot be found."
                return self._send(404, {"error": {"message": message, "type": "NotFoundError", "code": 404}})
            return self._send_bytes(200, b"Success: LoRA adapter unloaded")
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
        body = json.loads(raw)
        behaviour = self.server.record(body, {k.lower(): v for k, v in self.headers.items()})
        if callable(behaviour):
            behaviour = behaviour(body)
        kind, arg, *then = behaviour
        if kind == "sleep":
            # An Event, not time.sleep, so stop() frees sleeping handler threads at once.
            if self.server.stopping.wait(arg):
                return
            kind, arg = then[0] if then else ("text", "late reply")
        self._reply(body, kind, arg)

    def _reply(self, body: dict, kind: str, arg) -> None:
        if kind == "json":
            self._send(200, completion(body, json.dumps(arg)))
        elif kind == "text":
            self._send(200, completion(body, arg))
        elif kind == "refusal":
            self._send(200, completion(body, None, refusal=arg))
        elif kind == "logprobs":
            self._send(200, completion(body, arg[0][0], logprobs=token_logprobs(arg)))
        elif kind == "payload":
            self._send(200, arg)
        elif kind == "raw":
            self._send_bytes(200, arg.encode())
        elif kind == "error":
            code, message = arg
            self._send(code, {"error": {"message": message, "type": "invalid_request_error", "code": None}})
        elif kind == "status":
            error = {"error": {"message": f"scripted status {arg}", "type": "server_error", "code": None}}
            self._send(arg, error, {"retry-after-ms": "10"})
        else:
            raise ValueError(f"unknown behaviour {kind!r}")

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), headers)

    def _send_bytes(self, status: int, data: bytes, headers: dict | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout) before we answered
            pass


class FakeOpenAIServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list = []
        self.default: tuple | Callable[[dict], tuple] = ("status", 500)  # unscripted requests fail loudly
        self.requests: list[dict] = []  # every request body received, in arrival order
        self.headers: list[dict] = []  # their HTTP headers, names lower-cased
        self.adapter_requests: list[dict] = []  # bodies POSTed to /v1/load_lora_adapter
        self.loaded_adapters: dict[str, str] = {}  # name -> path of those that loaded
        self.adapter_unloads: list[str] = []  # names POSTed to /v1/unload_lora_adapter
        self.adapter_headers: list[dict] = []  # the HTTP headers of each load, names lower-cased
        self.adapter_reply: tuple[int, str] = (200, "Success: LoRA adapter loaded")  # its status and body
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def record(self, body: dict, headers: dict):
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            return self.script.pop(0) if self.script else self.default

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


def kill_cli_after(server: FakeOpenAIServer, argv: list[str], cwd, requests: int, timeout: float = 120) -> int:
    """Run `align <argv>` in a child process and kill -9 it once `server` has received `requests` requests (as a
    power cut would stop it, mid-request); returns how many it had received."""
    script = f"import sys\nfrom align.cli import main\nsys.exit(main({argv!r}))\n"
    child = subprocess.Popen([sys.executable, "-c", script], cwd=cwd, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + timeout
    while len(server.requests) < requests and time.time() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    return len(server.requests)


# Registered as `openai_server`; the function has another name so importing it into a test module (how the
# fixture is shared) does not trip ruff's F811 on every test argument that uses it.
@pytest.fixture(name="openai_server")
def openai_server_fixture():
    server = FakeOpenAIServer().start()
    yield server
    server.stop()
