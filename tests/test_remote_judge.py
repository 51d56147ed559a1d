"""`RemoteVerifier` against a stub chat-completions server on 127.0.0.1, and async reward functions in `RewardSet`."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from modules.rewards import RewardError, RewardSet, RewardSpec
from modules.settings import SettingsError
from modules.verifiers import (TINYV_PROMPT, RemoteVerifier, VerifierError, VerifierSettings, build_verifier,
                               fill_prompt)


class _Judge(BaseHTTPRequestHandler):
    """Replies "True" when the prompt's <model_answer> equals its <ground_truth_answer>, else "False"; markers in
    the answer change that: FLAKY (HTTP 500 on its first request), SLOW (sleeps 1 s every time), SLOWONCE (sleeps
    1 s on the first request), PAUSE (sleeps 0.3 s), BADJSON (a reply without choices, first time), GENERAL (writes
    "Final Decision: Yes")."""

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        with server.lock:
            server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            seen = server.seen[prompt] = server.seen.get(prompt, 0) + 1
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": "not found"})
            if "FLAKY" in prompt and seen == 1:
                return self._send(500, {"error": "overloaded"})
            if "SLOW" in prompt and ("SLOWONCE" not in prompt or seen == 1):
                time.sleep(1.0)
            if "PAUSE" in prompt:
                time.sleep(0.3)
            if "BADJSON" in prompt and seen == 1:
                return self._send(200, {"id": "x"})
            answer = prompt.split("<model_answer>")[-1].split("</model_answer>")[0]
            gold = prompt.split("<ground_truth_answer>")[-1].split("</ground_truth_answer>")[0]
            text = "Final Decision: Yes" if "GENERAL" in prompt else ("True" if answer.split()[0] == gold else "False")
            self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})
        finally:
            with server.lock:
                server.in_flight -= 1

    def _send(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass


@pytest.fixture
def judge():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    server.daemon_threads = True
    server.lock, server.requests, server.seen = threading.Lock(), [], {}
    server.in_flight = server.max_in_flight = 0
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.base = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_sends_the_filled_prompt_and_model_and_parses_the_verdicts(judge, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    v = RemoteVerifier(judge.base, "judge-7b", "tinyv", concurrency=2, api_key_env="MY_JUDGE_KEY")
    results = v.verify(["What is 1/2?", "2+2?", "Capital of France?"], ["0.5", "4", "Paris"], ["0.5", "5", "Paris"])
    assert [r.correct for r in results] == [True, False, True]
    assert [r.text for r in results] == ["True", "False", "True"]
    assert len(judge.requests) == 3
    sent = {r["body"]["messages"][0]["content"] for r in judge.requests}
    assert sent == {fill_prompt(TINYV_PROMPT, "What is 1/2?", "0.5", "0.5"), fill_prompt(TINYV_PROMPT, "2+2?", "4", "5"),
                    fill_prompt(TINYV_PROMPT, "Capital of France?", "Paris", "Paris")}
    for r in judge.requests:
        assert r["path"] == "/v1/chat/completions" and r["auth"] == "Bearer sk-test"
        assert r["body"]["model"] == "judge-7b" and r["body"]["max_tokens"] == 8 and r["body"]["temperature"] == 0
        assert r["body"]["messages"][0]["role"] == "user" and len(r["body"]["messages"]) == 1
    assert v.stats.items == 3 and v.stats.positives == 2 and v.stats.generate_calls == 3 and v.stats.retries == 0


def test_custom_template_and_general_verifier_parser(judge):
    v = RemoteVerifier(judge.base + "/chat/completions", "m", "Q={question} G={gold} A={answer} GENERAL",
                       parse="final_decision", max_tokens=16, api_key_env=None)
    assert [r.correct for r in v.verify(["q"], ["1"], ["1"])] == [True]
    body = judge.requests[0]["body"]
    assert body["messages"][0]["content"] == "Q=q G=1 A=1 GENERAL" and body["max_tokens"] == 16
    assert judge.requests[0]["auth"] is None


def test_a_500_then_a_success_is_retried_with_backoff(judge):
    v = RemoteVerifier(judge.base, "m", retries=2, backoff=0.2)
    started = time.perf_counter()
    results = v.verify(["q", "q2"], ["7", "8"], ["7 FLAKY", "9 BADJSON"])
    took = time.perf_counter() - started
    assert [r.correct for r in results] == [True, False]
    assert len(judge.requests) == 4 and v.stats.retries == 2 and v.stats.generate_calls == 4
    assert 0.2 <= took < 2.0  # waited the backoff once before each retry


def test_a_slow_reply_times_out_then_retries_or_fails(judge):
    v = RemoteVerifier(judge.base, "m", timeout=0.3, retries=1, backoff=0.0)
    assert [r.correct for r in v.verify(["q"], ["3"], ["3 SLOWONCE"])] == [True]
    assert v.stats.retries == 1
    started = time.perf_counter()
    with pytest.raises(VerifierError, match="failed 2 times; last error: .*(timed out|timeout)") as info:
        v.verify(["q"], ["3"], ["3 SLOW"])
    assert time.perf_counter() - started < 1.5 and "\n" not in str(info.value)


def test_a_4xx_stops_at_once(judge):
    v = RemoteVerifier(judge.base.replace("/v1", "/v2"), "m", retries=3, backoff=0.5)
    with pytest.raises(VerifierError, match="HTTP 404"):
        v.verify(["q"], ["1"], ["1"])
    assert len(judge.requests) == 1 and v.stats.retries == 0


def test_requests_run_concurrently(judge):
    v = RemoteVerifier(judge.base, "m", concurrency=4)
    started = time.perf_counter()
    results = v.verify(["q"] * 4, ["1", "2", "3", "4"], [f"{i} PAUSE" for i in (1, 2, 3, 0)])
    assert time.perf_counter() - started < 0.9  # 4 x 0.3 s one at a time would be 1.2 s
    assert [r.correct for r in results] == [True, True, True, False]  # input order kept
    assert judge.max_in_flight >= 2


def test_an_unreachable_server_is_one_line_after_its_retries():
    v = RemoteVerifier("http://127.0.0.1:9/v1", "m", retries=1, backoff=0.0, timeout=2)
    with pytest.raises(VerifierError, match="failed 2 times") as info:
        v.verify(["q"], ["1"], ["1"])
    assert "\n" not in str(info.value)


def test_settings_build_a_remote_verifier(judge):
    v = build_verifier({"kind": "remote", "url": judge.base, "model_name_or_path": "judge-x", "concurrency": 3,
                        "timeout": 5, "retries": 1, "backoff": 0.1, "max_new_tokens": 4}, default_prompt="tinyv")
    assert isinstance(v, RemoteVerifier)
    assert (v.model, v.concurrency, v.timeout, v.retries, v.backoff, v.max_tokens) == ("judge-x", 3, 5.0, 1, 0.1, 4)
    assert [r.correct for r in v.verify(["q"], ["2"], ["2"])] == [True]
    assert judge.requests[0]["body"]["model"] == "judge-x"


@pytest.mark.parametrize("fields, named", [
    ({"kind": "remote"}, "verifier.url is not set"),
    ({"kind": "remote", "url": "localhost:8000"}, "verifier.url='localhost:8000'"),
    ({"kind": "remote", "url": "http://h/v1", "concurrency": 0}, "verifier.concurrency=0"),
    ({"kind": "remote", "url": "http://h/v1", "timeout": 0}, "verifier.timeout=0"),
    ({"kind": "remote", "url": "http://h/v1", "backoff": -1}, "verifier.backoff=-1"),
    ({"kind": "remote", "url": "http://h/v1"}, "verifier.model_name_or_path='smollm2-135m-instruct' is the local"),
    ({"kind": "cloud"}, "verifier.kind='cloud'"),
])
def test_bad_settings_are_one_line_naming_the_field(fields, named):
    with pytest.raises(SettingsError) as info:
        VerifierSettings(**fields)
    assert named in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs, named", [
    ({"parse": "yes_no"}, "verifier.parse='yes_no'"),
    ({"prompt_template": "no fields"}, "verifier.prompt="),
    ({"retries": -1}, "verifier.retries=-1"),
    ({"max_tokens": 0}, "verifier.max_tokens=0"),
    ({"model": ""}, "verifier.model_name_or_path=''"),
])
def test_bad_verifier_arguments_are_one_line(kwargs, named):
    args = {"url": "http://127.0.0.1:1/v1", "model": "m", **kwargs}
    with pytest.raises(ValueError) as info:
        RemoteVerifier(**args)
    assert named in str(info.value) and "\n" not in str(info.value)


# ---- async reward functions -----------------------------------------------------------------------

async def sleepy_a(prompts, completions, **_):
    await asyncio.sleep(0.5)
    return [1.0] * len(completions)


async def sleepy_b(prompts, completions, value=2.0, **_):
    await asyncio.sleep(0.5)
    return [value] * len(completions)


def plain(prompts, completions, **_):
    return [0.25] * len(completions)


def test_async_rewards_run_concurrently_and_report_their_seconds():
    import functools

    rs = RewardSet([sleepy_a, functools.partial(sleepy_b, value=3.0), plain], weights=[1.0, 1.0, 2.0])
    started = time.perf_counter()
    per_func, total, seconds = rs.score(["p", "q"], ["x", "y"])
    took = time.perf_counter() - started
    assert took < 0.85, took  # one after another would be >= 1 s
    assert per_func.tolist() == [[1.0, 3.0, 0.25], [1.0, 3.0, 0.25]] and total.tolist() == [4.5, 4.5]
    assert list(seconds) == ["sleepy_a", "sleepy_b", "plain"]
    assert 0.45 <= seconds["sleepy_a"] < 0.85 and 0.45 <= seconds["sleepy_b"] < 0.85 and seconds["plain"] < 0.2


def test_async_reward_timeout_and_errors_name_the_function():
    async def stuck(prompts, completions, **_):
        await asyncio.sleep(5)
        return [1.0] * len(completions)

    async def broken(prompts, completions, **_):
        raise KeyError("answer")

    rs = RewardSet([stuck, plain], timeouts=[(0.2, "none"), (None, "error")])
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        per_func, total, seconds = rs.score(["p"], ["x"])
    assert time.perf_counter() - started < 1.0
    assert any("reward 'stuck' did not return within 0.2 s" in str(w.message) for w in caught)
    assert total.tolist() == [0.25] and 0.15 <= seconds["stuck"] < 1.0
    with pytest.raises(RewardError, match="reward 'stuck' did not return within its timeout of 0.2 s"):
        RewardSet([stuck], timeouts=[(0.2, "error")]).score(["p"], ["x"])
    with pytest.raises(RewardError, match="reward 'broken' raised KeyError"):
        RewardSet([broken, plain]).score(["p"], ["x"])


def test_an_async_remote_judge_reward_end_to_end(judge):
    """A user's async reward that asks the remote judge, next to a sync reward, through RewardSpec."""
    verifier = RemoteVerifier(judge.base, "judge-7b", concurrency=4)

    async def judged(prompts, completions, answer, **_):
        results = await asyncio.to_thread(verifier.verify, prompts, answer, completions)
        return [r.score for r in results]

    rs = RewardSet.from_specs([judged, RewardSpec("format", weight=0.0)])
    per_func, total, seconds = rs.score(["1+1?", "2+2?"], ["2", "5"], {"answer": ["2", "4"]})
    assert per_func[:, 0].tolist() == [1.0, 0.0] and set(seconds) == {"judged", "format"}
    assert {r["body"]["model"] for r in judge.requests} == {"judge-7b"} and len(judge.requests) == 2
