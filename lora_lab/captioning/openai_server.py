"""A caption engine that asks an OpenAI-compatible server: llama.cpp's ``llama-server``, vLLM,
LM Studio, Ollama's ``/v1``.

Big batches go faster with several requests in flight: the server batches them on the GPU
(``llama-server -np N`` splits its context into N parallel slots). Only the standard library is
used, so this engine costs nothing to import and needs no extra package.
"""
from __future__ import annotations

import http.client
import itertools
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from .base import Answer, CaptionError, data_uri, whole_answer

K = TypeVar("K")

BACKOFF_S = 0.5  # wait before the first retry; doubles with each further one
PROBE_TIMEOUT_S = 10.0  # the /models check at start-up: a live server answers it at once
START_HINT = ("start llama-server (llama-server -m MODEL.gguf --mmproj MMPROJ.gguf --port 8080 -np 4) "
              "or check the URL")


class _Transient(CaptionError):
    """A failure worth retrying: the server was busy or dropped the connection."""


def api_base(url: str) -> str:
    """``http://host:port``, ``.../v1`` or ``.../v1/chat/completions`` -> ``http://host:port/v1``."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CaptionError(f"caption server URL must start with http:// or https:// "
                           f"(e.g. http://127.0.0.1:8080), got {url!r}")
    path = parts.path.rstrip("/").removesuffix("/chat/completions")
    if not path.endswith("/v1"):
        path += "/v1"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class OpenAIServerCaptioner:
    """Captions through ``POST /v1/chat/completions``; ``caption`` is thread-safe (no shared state)."""

    def __init__(self, url: str, *, model: str | None = None, api_key: str | None = None,
                 concurrency: int = 4, timeout: float = 120.0, max_tokens: int = 300,
                 temperature: float = 0.2, retries: int = 2):
        if concurrency < 1 or timeout <= 0 or retries < 0:
            raise CaptionError(f"caption server: concurrency must be >= 1 (got {concurrency}), "
                               f"timeout > 0 (got {timeout}), retries >= 0 (got {retries})")
        self.base = api_base(url)
        self.url = self.base + "/chat/completions"
        self.concurrency, self.timeout, self.retries = concurrency, timeout, retries
        self.max_tokens, self.temperature = max_tokens, temperature
        if api_key is None:
            api_key = os.environ.get("LORA_LAB_CAPTION_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json",
                         "User-Agent": "lora-lab"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        models = self._models()  # also proves, now rather than mid-batch, that the server is there
        if model is None and not models:
            raise CaptionError(f"caption server at {self.base} lists no models: pass the model name")
        self.model = model or models[0]
        self.name = f"openai:{self.model}@{urllib.parse.urlsplit(self.base).netloc}"

    def _models(self) -> list[str]:
        """The model ids the server lists (llama-server: its ``--alias`` or the GGUF file name)."""
        reply = self._call("/models", timeout=min(self.timeout, PROBE_TIMEOUT_S))
        data = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(data, list):
            raise CaptionError(f"caption server at {self.base} sent no model list from /models: "
                               f"{_snippet(reply)}")
        return [str(m["id"]) for m in data if isinstance(m, dict) and m.get("id")]

    def caption(self, image: bytes, prompt: str) -> Answer:
        """One prepared JPEG and prompt -> the model's raw answer, asked again with a larger
        limit when ``max_tokens`` cut it (``finish_reason`` "length")."""
        return whole_answer(lambda limit: self._generate(image, prompt, limit), self.max_tokens)

    def _generate(self, image: bytes, prompt: str, max_tokens: int) -> tuple[str, str | None]:
        reply = self._call("/chat/completions", {
            "model": self.model,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_uri(image)}},
                {"type": "text", "text": prompt},
            ]}],
            "max_tokens": max_tokens,
            "temperature": self.temperature,
        })
        try:
            choice = reply["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise CaptionError(f"caption server at {self.base} sent no choices[0].message.content: "
                               f"{_snippet(reply)}")
        return content, choice.get("finish_reason")

    def caption_many(self, items: Iterable[tuple[K, bytes, str]]) -> Iterator[tuple[K, Answer | CaptionError]]:
        """Caption ``(key, image, prompt)`` items with up to ``concurrency`` requests in flight.

        Results come as they complete, in any order, each with its key; a failed item comes back
        as its ``CaptionError`` so the batch goes on. ``items`` is read lazily, only as far as
        free slots reach, so a generator that prepares images never runs far ahead.
        """
        source = iter(items)
        pending: dict[Future[Answer], K] = {}
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="lora-lab-caption")
        try:
            self._fill(pool, source, pending)
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                finished = [(pending.pop(f), _outcome(f)) for f in done]
                self._fill(pool, source, pending)  # keep the server busy while the caller works
                yield from finished
        finally:  # also when the caller stops early: drop what has not started
            pool.shutdown(wait=False, cancel_futures=True)

    def _fill(self, pool: ThreadPoolExecutor, source: Iterator[tuple[K, bytes, str]],
              pending: dict[Future[Answer], K]) -> None:
        for key, image, prompt in itertools.islice(source, self.concurrency - len(pending)):
            pending[pool.submit(self.caption, image, prompt)] = key

    def close(self) -> None:
        """Nothing to free: each request opens and closes its own connection."""

    def _call(self, path: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """One request, retried with backoff on transient failures; the decoded JSON reply."""
        for attempt in itertools.count():
            try:
                return self._once(path, body, timeout or self.timeout)
            except _Transient as e:
                if attempt >= self.retries:
                    raise CaptionError(f"{e} (tried {attempt + 1} times)" if attempt else str(e)) from None
                time.sleep(BACKOFF_S * 2 ** attempt)

    def _once(self, path: str, body: dict[str, Any] | None, timeout: float) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            raise self._http_error(e) from None
        except (OSError, http.client.HTTPException) as e:
            raise self._connection_error(e, timeout) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise CaptionError(f"caption server at {self.base} sent a reply that is not JSON: "
                               f"{_snippet(raw)}") from None

    def _http_error(self, e: urllib.error.HTTPError) -> CaptionError:
        message = f"caption server at {self.base} answered HTTP {e.code}: {_server_message(e)}"
        if e.code in (401, 403):
            message += " (set the API key: $LORA_LAB_CAPTION_API_KEY or api_key=)"
        # 5xx: a crashed slot or a model still loading; 429: the server's queue is full.
        return _Transient(message) if e.code == 429 or e.code >= 500 else CaptionError(message)

    def _connection_error(self, e: OSError | http.client.HTTPException, timeout: float) -> CaptionError:
        # urlopen wraps errors raised while connecting and sending in URLError; errors while
        # waiting for the answer come bare.
        cause = e.reason if isinstance(e, urllib.error.URLError) else e
        if isinstance(cause, TimeoutError):  # not retried: a stuck generation would stick again
            return CaptionError(f"caption server at {self.base} did not answer within {timeout:g} s "
                                f"(raise the timeout for slow models or long captions)")
        if isinstance(cause, ConnectionError) and not isinstance(cause, ConnectionRefusedError):
            return _Transient(f"caption server at {self.base} dropped the connection ({_describe(cause)})")
        if isinstance(e, urllib.error.URLError):
            return CaptionError(f"no caption server at {self.base}: {_describe(cause)} — {START_HINT}")
        return CaptionError(f"caption server at {self.base} failed: {_describe(cause)}")


def _outcome(future: Future[Answer]) -> Answer | CaptionError:
    try:
        return future.result()
    except CaptionError as e:
        return e


def _server_message(e: urllib.error.HTTPError) -> str:
    """The server's own words: ``{"error": {"message": ..}}`` (llama-server, Ollama, OpenAI),
    ``{"error": ".."}`` or ``{"message": ..}`` (older vLLM), else the body's start."""
    try:
        raw = e.read()
    except (OSError, http.client.HTTPException):
        return e.reason or "no details"
    try:
        reply = json.loads(raw)
    except ValueError:
        return _snippet(raw) if raw.strip() else str(e.reason)
    error = reply.get("error", reply) if isinstance(reply, dict) else reply
    if isinstance(error, dict) and "message" in error:
        error = error["message"]
    return error if isinstance(error, str) else _snippet(error)


def _describe(cause: BaseException | str) -> str:
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()  # "connection refused", "name or service not known"
    return str(cause) or type(cause).__name__


def _snippet(value: Any, limit: int = 200) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else (
        value if isinstance(value, str) else json.dumps(value))
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "…"
