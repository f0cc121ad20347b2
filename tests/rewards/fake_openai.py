"""A small OpenAI-compatible chat server for tests, which misbehaves on command.

`server.script` is a list of behaviours consumed one per request (then `server.default`):
"ok", "slow" (sleeps `slow_s` then answers), "500", "429" (with Retry-After: 0), "garbage" (a
200 whose content is not JSON), "badbody" (a 200 whose body is not JSON), "hold" (sleeps `hold_s`
then answers: for concurrency counts). `server.reply(messages) -> str` makes the content.
"""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

JUDGE_REPLY = '{"correctness": 4, "followability": 3, "standardization": 5, "reason": "fine"}'


class FakeServer:
    """State shared with the handler threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.script = []
            self.default = "ok"
            self.slow_s = 1.0
            self.hold_s = 0.05
            self.requests = 0
            self.in_flight = 0
            self.max_in_flight = 0
            self.bodies = []
            self.auth = []
            self.reply = lambda messages: JUDGE_REPLY

    def next_behaviour(self, body, auth):
        with self.lock:
            self.requests += 1
            self.bodies.append(body)
            self.auth.append(auth)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self.script.pop(0) if self.script else self.default

    def done(self):
        with self.lock:
            self.in_flight -= 1


def _handler(state: FakeServer):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, code, payload, headers=()):
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_POST(self):
            n = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(n) or b"{}")
            how = state.next_behaviour(body, self.headers.get("Authorization"))
            try:
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": f"no route {self.path}"})
                if how == "slow":
                    time.sleep(state.slow_s)
                if how == "hold":
                    time.sleep(state.hold_s)
                if how == "500":
                    return self._send(500, {"error": "internal"})
                if how == "429":
                    return self._send(429, {"error": "rate limited"}, [("Retry-After", "0")])
                if how == "400":
                    return self._send(400, {"error": "bad request"})
                if how == "badbody":
                    return self._send(200, b"<html>oops</html>")
                content = "I think the plan is quite good!!" if how == "garbage" else state.reply(body["messages"])
                self._send(200, {"id": "x", "object": "chat.completion", "model": body.get("model"),
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": content}}]})
            finally:
                state.done()

    return H


def start():
    """(FakeServer state, base_url, stop function) for a server on a free 127.0.0.1 port."""
    state = FakeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"

    def stop():
        httpd.shutdown()
        httpd.server_close()

    return state, url, stop
