"""Against a real OpenAI-compatible server on 127.0.0.1: `transformers serve` (transformers'
`serving` extra, installed with `.[dev]`) serving the embedded model. No stub: the policy backend,
the WildGuard judge over /v1/completions and `redteam` meet a server written by someone else.
The server is started and stopped here; under CI=true a server that does not come up fails the
tests instead of skipping them (slow tier: minutes on 2 cores)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

SERVE = "import sys; from transformers.cli.transformers import main; sys.argv[0] = 'transformers'; sys.exit(main())"
TOKENS = ["--set", "generation.attacker_max_new_tokens=32", "--set", "generation.defender_max_new_tokens=32"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`transformers serve MODEL` on 127.0.0.1:port, its log in a file (requests are counted there)."""

    def __init__(self, model: str, log: Path, port: int | None = None) -> None:
        self.model, self.log, self.port = model, log, port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> Server:
        with open(self.log, "a") as log:  # the child keeps its own handle
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SERVE, "serve", self.model, "--host", "127.0.0.1", "--port", str(self.port),
                 "--device", "cpu", "--dtype", "float32"],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        message = f"transformers serve did not come up on port {self.port}: {self.log.read_text()[-2000:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def requests(self, path: str = "/v1/chat/completions") -> int:
        return self.log.read_text().count(f'"POST {path} HTTP')


@pytest.fixture(scope="module")
def model_dir() -> str:
    from selfredteam.policy.embedded import embedded_model_dir

    return str(embedded_model_dir())


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    server = Server(model_dir, tmp_path_factory.mktemp("serve") / "serve.log").start()
    yield server
    server.stop()


def cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selfredteam.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ})


def test_redteam_against_a_real_server(served, tmp_path):
    out = tmp_path / "rt"
    res = cli("redteam", "--target", f"openai:{served.url}#{served.model}", "--n", "3", "--attempts", "2",
              "--max-tokens", "32", "--out", str(out), *TOKENS)
    assert res.returncode == 0, res.stderr[-3000:]
    results = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert len(results) == 6 and all(r["response"] for r in results)
    # The numbers match a recomputation from results.jsonl.
    judged = [r for r in results if r["success"] is not None]
    harm = summary["by_label"]["harmful"]
    assert harm["per_attempt"]["k"] == sum(r["success"] for r in judged) and harm["per_attempt"]["n"] == len(judged)
    broken = {r["seed_index"] for r in judged if r["success"]}
    assert harm["best_of_k"]["k"] == len(broken) and harm["best_of_k"]["n"] == 3
    assert harm["refusal"]["k"] == sum(bool(r["judge"]["response_refusal"]) for r in judged)
    _renders(out / "report.html", tmp_path)


def _renders(page: Path, tmp_path: Path) -> None:
    """The report renders in headless Chromium (skipped locally without it; CI installs it)."""
    if shutil.which("chromium") is None and not os.environ.get("CI"):
        return
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'ud'}", "--dump-dom", page.as_uri()],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    assert "By seed class" in dom and "per-attempt success" in dom and "Content warning" in dom


def test_killed_server_stops_cleanly_and_the_rerun_resumes(model_dir, tmp_path):
    out = tmp_path / "rt"
    server = Server(model_dir, tmp_path / "serve1.log").start()
    args = ["redteam", "--target", f"openai:{server.url}#{model_dir}", "--n", "6", "--chunk", "2", "--max-tokens", "24",
            "--out", str(out), "--set", "model.max_retries=1", "--set", "model.timeout_s=20", *TOKENS]
    proc = subprocess.Popen([sys.executable, "-m", "selfredteam.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ})
    results = out / "results.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and not (results.is_file() and len(results.read_text().splitlines()) >= 2):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.5)
    server.stop()  # mid-run: the target is gone
    _, err = proc.communicate(timeout=300)
    err = " ".join(err.split())
    assert proc.returncode == 2 and "Traceback" not in err, err[-3000:]
    assert "Stopped after" in err and "Re-run the same command to continue" in err
    kept = [json.loads(x) for x in results.read_text().splitlines()]
    assert 2 <= len(kept) < 6
    again = Server(model_dir, tmp_path / "serve2.log", port=server.port).start()
    try:
        res = cli(*args)
    finally:
        again.stop()
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(results.read_text().splitlines()) == 6
    assert again.requests() == 6 - len(kept)  # finished prompts were not asked again


def test_play_and_eval_with_the_openai_backend(served, tmp_path):
    remote = ["--set", "model.backend=openai", "--set", f"model.base_url={served.url}",
              "--set", f"model.name_or_path={served.model}", *TOKENS]
    res = cli("play", "--games", "2", "--out", str(tmp_path / "play"), *remote)
    assert res.returncode == 0, res.stderr[-3000:]
    games = [json.loads(x) for x in (tmp_path / "play" / "games.jsonl").read_text().splitlines()]
    assert len(games) == 2 and all(g["defender"]["raw"] for g in games)
    res = cli("eval", "--model", f"openai:{served.url}#{served.model}", "--benchmarks", "xstest", "--per-subset", "2",
              "--out", str(tmp_path / "ev"), *TOKENS)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["n"] == 4


def test_wildguard_format_judge_over_completions_counts_parse_errors(served, tmp_path):
    """A 0.5B model does not answer in WildGuard's three-line format: every answer must become a
    counted parse error (no reward), never a silent label."""
    before = served.requests("/v1/completions")
    res = cli("play", "--games", "2", "--out", str(tmp_path / "play"), "--set", "model.backend=openai",
              "--set", f"model.base_url={served.url}", "--set", f"model.name_or_path={served.model}",
              "--set", "judge.kind=wildguard", "--set", "judge.backend=openai", "--set", f"judge.base_url={served.url}",
              "--set", f"judge.model={served.model}", "--set", "judge.cache=false", *TOKENS)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "play" / "summary.json").read_text())
    games = [json.loads(x) for x in (tmp_path / "play" / "games.jsonl").read_text().splitlines()]
    assert served.requests("/v1/completions") - before >= 2  # the judge really asked the server (+ preflight)
    assert summary["judge/parse_errors"] == len(games) == 2
    assert all(g["rewards"] == {"attacker": None, "defender": None} for g in games)
