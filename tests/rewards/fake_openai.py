"""A small OpenAI-compatible chat server for tests, which misbehaves on command.

`server.script` is a list of behaviours consumed one per request (then `server.default`):
"ok", "slow" (sleeps `slow_s` then answers), "500", "429" (with Retry-After: 0), "garbage" (a
200 whose content is not JSON), "badbody" (a 200 whose body is not JSON), "hold" (sleeps `hold_s`
then answers), "gate" (waits at the `server.gate` barrier, so that many requests are in flight at
once, then holds them `hold_s` more, time for a request over the limit to show up, and answers; a
barrier timeout is counted in `gate_timeouts`), "hang" (answers only once
`server.release` is set, or after `hang_s`: a hung endpoint). `server.reply(messages) -> str` makes
the content.

`in_flight` counts requests received and not yet answered (decremented before the answer is sent,
so a client that waits for its answer never sees its next request counted with the old one).
`reset()` starts a new generation: handlers still running from an earlier test (a "slow" answer the
client gave up on) no longer touch the counters, and hung handlers are released.
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
        self.generation = 0
        self.release = threading.Event()
        self.reset()

    def reset(self):
        with self.lock:
            self.generation += 1
            self.release.set()  # free handlers hung or held at the gate by an earlier test
            if getattr(self, "gate", None) is not None:
                self.gate.abort()
            self.release = threading.Event()
            self.hang_s = 30.0
            self.gate = None  # a threading.Barrier for "gate"
            self.gate_timeouts = 0
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
        """(behaviour, generation) of the next request, counted in flight."""
        with self.lock:
            self.requests += 1
            self.bodies.append(body)
            self.auth.append(auth)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return (self.script.pop(0) if self.script else self.default), self.generation

    def wait_at_gate(self, generation):
        """Wait until the gate's parties are all in flight; count a timeout (a broken barrier)."""
        try:
            self.gate.wait()
        except threading.BrokenBarrierError:
            with self.lock:
                if generation == self.generation:
                    self.gate_timeouts += 1

    def done(self, generation):
        """A request of `generation` is answered (ignored once reset has started a new generation)."""
        with self.lock:
            if generation == self.generation:
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
            how, generation = state.next_behaviour(body, self.headers.get("Authorization"))
            try:
                answer = self._answer(how, body, generation)
            finally:
                state.done(generation)
            self._send(*answer)

        def _answer(self, how, body, generation):
            if self.path != "/v1/chat/completions":
                return 404, {"error": f"no route {self.path}"}
            if how == "slow":
                time.sleep(state.slow_s)
            if how == "hold":
                time.sleep(state.hold_s)
            if how == "gate":
                state.wait_at_gate(generation)
                time.sleep(state.hold_s)
            if how == "hang":
                state.release.wait(state.hang_s)
            if how == "500":
                return 500, {"error": "internal"}
            if how == "429":
                return 429, {"error": "rate limited"}, [("Retry-After", "0")]
            if how == "400":
                return 400, {"error": "bad request"}
            if how == "badbody":
                return 200, b"<html>oops</html>"
            content = "I think the plan is quite good!!" if how == "garbage" else state.reply(body["messages"])
            return 200, {"id": "x", "object": "chat.completion", "model": body.get("model"),
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": content}}]}

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
