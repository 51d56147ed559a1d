"""A judge behind an OpenAI-compatible chat-completions endpoint (vLLM / SGLang server, a hosted API) as a `Verifier`.

Each item's prompt (a preset of `modules.verifiers.llm`, or a template with {question}, {gold}, {answer}) is sent as
one user message to ``<url>/chat/completions``, greedy by default; the reply's ``choices[0].message.content`` goes
through the preset's parser (or the one named). Items are sent `concurrency` at a time from a thread pool; a request
that fails with a connection error, a timeout, HTTP 429 or 5xx, or a reply without a message is retried `retries`
times, waiting ``backoff * 2**k`` seconds before the k-th retry; other HTTP errors (400, 401, 404) stop at once.
Standard library only (urllib).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Callable, Sequence

from modules.verifiers.base import VerifierError
from modules.verifiers.llm import PromptedVerifier

RETRIED_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def chat_completions_url(url: str) -> str:
    """``url`` itself when it ends with ``/chat/completions``, else ``url + "/chat/completions"`` (give the base,
    e.g. ``http://localhost:8000/v1``).

    >>> chat_completions_url("http://localhost:8000/v1/"), chat_completions_url("http://h/v1/chat/completions")
    ('http://localhost:8000/v1/chat/completions', 'http://h/v1/chat/completions')
    """
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


class _Retryable(Exception):
    """A failure worth another attempt."""


class RemoteVerifier(PromptedVerifier):
    """An LLM judge served over HTTP (OpenAI chat-completions API).

    Args:
        url: Base URL of the server (``http://host:8000/v1``) or the full ``.../chat/completions`` URL.
        model: The model name the server serves (the request's ``model`` field).
        prompt_template: A preset (tinyv, general_verifier) or a template with {question}, {gold}, {answer}.
        parse: Output parser: true_false, final_decision, a preset name, or a function text -> bool; None = the
            preset's (a custom template needs one).
        max_tokens: The request's ``max_tokens``; None = the preset's decoding budget (64 for a custom template).
        concurrency: Requests in flight at once.
        timeout: Seconds one request may take (connect + reply).
        retries: Extra attempts for a failed request (connection error, timeout, 429, 5xx, unusable reply).
        backoff: Seconds before the first retry, doubling each retry.
        temperature: Sampling temperature (0: greedy).
        stop: Optional stop strings (the request's ``stop``).
        api_key_env: Name of the environment variable holding the API key, sent as ``Authorization: Bearer``;
            nothing is sent when the variable is unset.
    """

    name = "remote"

    def __init__(self, url: str, model: str, prompt_template: str = "tinyv",
                 parse: str | Callable[[str], bool] | None = None, max_tokens: int | None = None,
                 concurrency: int = 8, timeout: float = 60.0, retries: int = 3, backoff: float = 1.0,
                 temperature: float = 0.0, stop: Sequence[str] | None = None,
                 api_key_env: str | None = "OPENAI_API_KEY") -> None:
        super().__init__()
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"verifier.url={url!r}; give the server's http:// or https:// base URL "
                             "(e.g. http://localhost:8000/v1)")
        if not model or not isinstance(model, str):
            raise ValueError(f"verifier.model_name_or_path={model!r}; give the model name the server serves")
        preset = self._set_prompt(prompt_template, parse)
        _check("max_tokens", max_tokens, 1, integer=True, optional=True)
        _check("concurrency", concurrency, 1, integer=True)
        _check("retries", retries, 0, integer=True)
        _check("timeout", timeout, 0, strict=True)
        _check("backoff", backoff, 0)
        _check("temperature", temperature, 0)
        self.url, self.endpoint, self.model = url, chat_completions_url(url), model
        self.max_tokens = int(max_tokens or (preset.max_new_tokens if preset else 64))
        self.concurrency, self.timeout, self.retries = int(concurrency), float(timeout), int(retries)
        self.backoff, self.temperature = float(backoff), float(temperature)
        self.stop, self.api_key_env = list(stop) if stop else None, api_key_env
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"RemoteVerifier({self.endpoint!r}, model={self.model!r}, prompt={self.preset or 'custom'}, "
                f"concurrency={self.concurrency})")

    def generate(self, prompts: list[str]) -> list[str]:
        """The server's reply to each prompt, in input order, `concurrency` requests at a time."""
        if len(prompts) == 1 or self.concurrency == 1:
            return [self._complete(p) for p in prompts]
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts)),
                                                   thread_name_prefix="remote-judge") as pool:
            return list(pool.map(self._complete, prompts))

    def _complete(self, prompt: str) -> str:
        body: dict = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                      "max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.stop:
            body["stop"] = self.stop
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                with self._lock:
                    self.stats.retries += 1
                time.sleep(self.backoff * 2 ** (attempt - 1))
            with self._lock:
                self.stats.generate_calls += 1
            try:
                return self._post(data, headers)
            except _Retryable as err:
                last = str(err)
        raise VerifierError(f"{self!r}: the request failed {self.retries + 1} times; last error: {last}")

    def _post(self, data: bytes, headers: dict) -> str:
        request = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:200].decode(errors="replace").replace("\n", " ")
            if err.code in RETRIED_STATUS:
                raise _Retryable(f"HTTP {err.code}: {detail}") from None
            raise VerifierError(f"{self!r}: HTTP {err.code} from {self.endpoint}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError) as err:
            reason = getattr(err, "reason", err)
            raise _Retryable(f"{type(reason).__name__}: {reason}") from None
        try:
            return str(json.loads(raw)["choices"][0]["message"]["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retryable(f"unusable reply {raw[:200]!r}") from None


def _check(field: str, value, low: float, *, integer: bool = False, strict: bool = False,  # noqa: ANN001
           optional: bool = False) -> None:
    if value is None and optional:
        return
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = ok and not isinstance(value, bool) and (value > low if strict else value >= low)
    if not ok:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"verifier.{field}={value!r}; it must be {kind} {'>' if strict else '>='} {low:g}")
