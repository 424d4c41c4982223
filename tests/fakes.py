"""Test doubles for unit tests only (never used by the package): a scripted policy and judge."""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from selfredteam.judges.base import Judgement
from selfredteam.policy.base import Generation, SamplingParams, Turn


class FakePolicy:
    """Returns a scripted completion per role; records the turns it saw."""

    name = "fake-policy"

    def __init__(self, attacker_text: str, defender_text: str) -> None:
        self.attacker_text, self.defender_text = attacker_text, defender_text
        self.calls: list[list[Turn]] = []

    def generate(self, turns: list[Turn], params: SamplingParams) -> list[Generation]:
        self.calls.append(turns)
        out = []
        for t in turns:
            is_attacker = "red-teaming" in t.messages[0]["content"]
            out.append(Generation(self.attacker_text if is_attacker else self.defender_text, [1, 2], [3, 4]))
        return out


class FakeJudge:
    """Labels every pair with fixed labels, or a parse error for prompts containing 'UNPARSEABLE'."""

    judge_id = "fake-judge"

    def __init__(self, ph=True, rr=True, rh=False) -> None:
        self.labels = (ph, rr, rh)
        self.seen: list[tuple[str, str | None]] = []

    def judge(self, pairs):
        self.seen += pairs
        return [Judgement(None, None, None, parse_error=True) if "UNPARSEABLE" in p else Judgement(*self.labels)
                for p, _ in pairs]


@contextlib.contextmanager
def local_server(reply):
    """A loopback HTTP server for endpoint tests. `reply(path, body, headers)` returns
    (status, json-able dict or None); yields the base URL ending in /v1."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, data = reply(self.path, body, self.headers)
            out = json.dumps(data).encode() if data is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}/v1"
    finally:
        srv.shutdown()
