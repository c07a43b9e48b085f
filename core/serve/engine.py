"""InferenceEngine: load and cache base models and adapters, stream generated text.

MLX arrays belong to the thread that made them, so every MLX operation of the server process
(loads, adapter swaps, generation) runs on one engine thread. Callers queue a request and read
chunks from a queue of their own; several chats at once are served one after another.

One base in memory serves all its adapters: switching between adapters of a base (or back to
the plain base) swaps the LoRA layers and weights, never reloads the base. Adapter weights are
cached after their first read. Prompt (KV) caches are kept per conversation prefix, so the next
turn of a conversation only processes its new tokens.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.adapters.layout import CONFIG_FILE, WEIGHTS_FILE
from core.errors import StudioError
from core.models.inspect import context_length
from core.serve import lora_layers
from core.serve.registry import ModelEntry, ModelRegistry
from core.serve.stops import StopScanner

if TYPE_CHECKING:
    from mlx_lm.models.cache import LRUPromptCache

log = logging.getLogger(__name__)

_END = object()
# KV caches of recent conversations, over all bases in memory (LORA_STUDIO_PROMPT_CACHE_GB)
DEFAULT_PROMPT_CACHE_BYTES = 2 * 10**9
# seconds paused after each generated token: a real model's pace with the tiny test model,
# whose replies stream at hundreds of tokens a second (for tests and demos)
TOKEN_DELAY = float(os.environ.get("LORA_STUDIO_TOKEN_DELAY") or 0)


class ModelUnavailable(StudioError):
    """The model exists but cannot be used now (corrupt adapter, missing base, ...)."""


class UnusableMessages(StudioError):
    """Messages the model's chat template refuses (roles out of order, say): the caller's
    input, not a failure of the studio."""


@dataclass
class GenerationParams:
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    repetition_penalty: float | None = None
    stop: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Chunk:
    """A piece of a streamed reply; the last one carries ``finish_reason``."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None


@dataclass
class _Base:
    """A base model in memory, and the KV caches of its recent conversations.

    The caches live and die with their base, and are keyed by the adapter and the version of
    its weights, so a cache can never be matched to weights other than those that made it.
    """

    model: Any
    tokenizer: Any
    prompt_caches: LRUPromptCache
    adapter_id: str | None = None  # the adapter whose weights are in the LoRA layers
    lora_shape: tuple | None = None  # (num_layers, rank, scale, keys) of those layers


@dataclass
class _Request:
    entry: ModelEntry
    messages: list[dict]
    params: GenerationParams
    out: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)


class InferenceEngine:
    """Chat with any available model of the registry, streamed, from any thread."""

    def __init__(
        self,
        registry: ModelRegistry,
        max_bases: int = 1,
        max_conversations: int = 8,
        prompt_cache_bytes: int = DEFAULT_PROMPT_CACHE_BYTES,
    ):
        self.registry = registry
        self.max_bases = max_bases
        self.max_conversations = max_conversations
        self.prompt_cache_bytes = prompt_cache_bytes  # over all bases in memory
        # base_loads, adapter_reads, prompt_tokens_processed, generated_tokens
        self.stats: Counter[str] = Counter()
        self._bases: OrderedDict[Path, _Base] = OrderedDict()
        self._adapter_weights: OrderedDict[str, tuple[float, dict]] = OrderedDict()
        self._jobs: queue.Queue = queue.Queue()
        self._generating = False  # a reply is being generated now
        self._thread = threading.Thread(target=self._serve, name="inference-engine", daemon=True)
        self._thread.start()
        self._unsubscribe = registry.subscribe(self._on_registry_change)

    # -- what callers use ------------------------------------------------------------------------

    def stream(
        self,
        model_id: str,
        messages: list[dict],
        params: GenerationParams | None = None,
        cancelled: threading.Event | None = None,
    ) -> Iterator[Chunk]:
        """Stream the reply of ``model_id`` to ``messages`` (OpenAI-style role/content dicts).

        Raises StudioError for an unknown model and ModelUnavailable for one that cannot be
        used, with the reason. Closing the iterator early, or setting ``cancelled`` (from any
        thread: a server whose client went away), stops the generation at the next token.
        """
        entry = self._usable(model_id)
        request = _Request(entry, messages, params or GenerationParams())
        if cancelled is not None:
            request.cancelled = cancelled
        self._jobs.put(request)
        try:
            while (item := request.out.get()) is not _END:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            request.cancelled.set()

    @property
    def busy(self) -> bool:
        """Whether a new request would wait: the engine serves one generation at a time, so
        a second chat waits for the first (a page says so instead of showing nothing)."""
        return self._generating or not self._jobs.empty()

    def chat(self, model_id: str, messages: list[dict], params: GenerationParams | None = None):
        """The whole reply as one string (and the last chunk, for its counts)."""
        chunks = list(self.stream(model_id, messages, params))
        return "".join(c.text for c in chunks), chunks[-1]

    def call(self, function: Callable[[], Any]) -> Any:
        """Run ``function`` on the engine thread (where MLX objects live) and return its result."""
        done: queue.Queue = queue.Queue()
        self._jobs.put(lambda: done.put(_try(function)))
        result = done.get()
        if isinstance(result, BaseException):
            raise result
        return result

    def with_model(self, model_id: str, function: Callable[[Any, Any], Any]) -> Any:
        """Run ``function(model, tokenizer)`` on the engine thread with ``model_id`` active
        (its base in memory, its adapter applied): batch generation and scoring use the
        base that the chats use, so evaluating several adapters of one base loads it once."""
        entry = self._usable(model_id)

        def run() -> Any:
            base = self._activate(entry)
            return function(base.model, base.tokenizer)

        return self.call(run)

    def close(self) -> None:
        """Release every model and stop listening to the registry.

        The engine thread itself stays parked (a daemon): MLX gives each thread that generates
        a stream with a worker thread of its own, and a process whose generating thread has
        ended aborts at exit ("terminate called without an active exception").
        """
        self._unsubscribe()
        self.call(self._release_all)

    def _usable(self, model_id: str) -> ModelEntry:
        """The entry of ``model_id``; StudioError if unknown, ModelUnavailable (with the
        reason) if it cannot be used now."""
        entry = self.registry.get(model_id)
        if not entry.available:
            what = "adapter" if entry.kind == "adapter" else "model"
            raise ModelUnavailable(f"{what} unavailable: {entry.reason}")
        return entry

    def _release_all(self) -> None:
        import mlx.core as mx

        self._bases.clear()
        self._adapter_weights.clear()
        mx.clear_cache()

    def clear_prompt_caches(self) -> None:
        """Forget every conversation's KV cache (call it through ``call``)."""
        for base in self._bases.values():
            base.prompt_caches.trim_to(n_sequences=0)

    # -- the engine thread -----------------------------------------------------------------------

    def _serve(self) -> None:
        while job := self._jobs.get():
            if callable(job):
                try:
                    job()
                except Exception:  # noqa: BLE001 - one failed job must not stop every chat
                    log.exception("an engine job failed")
                continue
            if job.cancelled.is_set():
                continue
            self._generating = True
            try:
                self._generate(job)
            except StudioError as exc:
                job.out.put(exc)
            except Exception as exc:  # noqa: BLE001 - report it to the caller, keep serving
                log.exception("generation failed for %s", job.entry.id)
                job.out.put(StudioError(f"generation failed: {exc}"))
            finally:
                self._generating = False
                job.out.put(_END)

    def _generate(self, job: _Request) -> None:
        from mlx_lm import stream_generate
        from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        base = self._activate(job.entry)
        try:
            prompt = base.tokenizer.apply_chat_template(job.messages, add_generation_prompt=True)
        except Exception as exc:  # noqa: BLE001 - jinja's errors (raise_exception) among them
            reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            message = f"the messages do not fit the model's chat template: {reason}"
            raise UnusableMessages(message) from None
        cache_key = (base.adapter_id, self._adapter_version(base.adapter_id))
        cache, rest = base.prompt_caches.fetch_nearest_cache(cache_key, prompt)
        if cache is not None and not rest:
            # the whole prompt is cached, but generating needs one token to process
            if can_trim_prompt_cache(cache):
                trim_prompt_cache(cache, 1)
                rest = prompt[-1:]
            else:
                cache = None
        if cache is None:
            cache, rest = make_prompt_cache(base.model), prompt
        self.stats["prompt_tokens_processed"] += len(rest)
        p = job.params
        room = (context_length(base_path(job.entry)) or 1 << 30) - len(prompt)
        if room < 1:
            raise StudioError(f"the conversation ({len(prompt)} tokens) fills the model's context")
        stops = StopScanner(p.stop)
        generated: list[int] = []
        finish = "length"
        for response in stream_generate(
            base.model,
            base.tokenizer,
            prompt=rest,
            max_tokens=min(p.max_tokens, room),
            sampler=make_sampler(temp=p.temperature, top_p=p.top_p),
            logits_processors=make_logits_processors(repetition_penalty=p.repetition_penalty),
            prompt_cache=cache,
        ):
            generated.append(response.token)
            self.stats["generated_tokens"] += 1
            text, stopped = stops.feed(response.text)
            if response.finish_reason == "stop" or stopped:
                finish = "stop"
            done = finish == "stop" or response.finish_reason is not None
            if done and not stopped:
                text += stops.flush()
            if text or done:
                job.out.put(Chunk(text, len(prompt), len(generated), finish if done else None))
            if done or job.cancelled.is_set():
                break
            if TOKEN_DELAY:
                time.sleep(TOKEN_DELAY)
        held = (prompt + generated)[: cache[0].offset] if hasattr(cache[0], "offset") else []
        if held:
            base.prompt_caches.insert_cache(cache_key, held, cache)

    def _activate(self, entry: ModelEntry) -> _Base:
        """The base of ``entry`` in memory, with ``entry``'s adapter (or none) applied."""
        base = self._load_base(base_path(entry))
        adapter_id = entry.id.removeprefix("lora/") if entry.kind == "adapter" else None
        if base.adapter_id != adapter_id or (adapter_id and self._stale(adapter_id, entry)):
            try:
                self._apply_adapter(base, entry, adapter_id)
            except Exception as exc:
                self._strip_lora(base)
                if isinstance(exc, StudioError):
                    raise
                raise ModelUnavailable(f"adapter unavailable: {exc}") from exc
        return base

    def _load_base(self, path: Path) -> _Base:
        import mlx.core as mx

        from core.models.loading import load_model

        path = Path(path).resolve()
        if path in self._bases:
            self._bases.move_to_end(path)
            return self._bases[path]
        while len(self._bases) >= self.max_bases:
            self._bases.popitem(last=False)  # its prompt caches go with it
            mx.clear_cache()
        try:
            model, tokenizer = load_model(path)
        except Exception as exc:  # noqa: BLE001 - any failure means the model cannot be used
            raise ModelUnavailable(
                f"model unavailable: {path.name} failed to load ({exc})"
            ) from exc
        mx.eval(model.parameters())
        model.eval()
        self.stats["base_loads"] += 1
        from mlx_lm.models.cache import LRUPromptCache

        caches = LRUPromptCache(
            max_size=self.max_conversations,
            max_bytes=max(self.prompt_cache_bytes // self.max_bases, 0),
        )
        self._bases[path] = _Base(model, tokenizer, caches)
        return self._bases[path]

    def _adapter_version(self, adapter_id: str | None) -> float | None:
        cached = self._adapter_weights.get(adapter_id) if adapter_id else None
        return cached[0] if cached else None

    def _stale(self, adapter_id: str, entry: ModelEntry) -> bool:
        cached = self._adapter_weights.get(adapter_id)
        return cached is None or cached[0] != _mtime(entry.path / WEIGHTS_FILE)

    def _apply_adapter(self, base: _Base, entry: ModelEntry, adapter_id: str | None) -> None:
        import mlx.core as mx
        from mlx.utils import tree_flatten
        from mlx_lm.tuner.utils import linear_to_lora_layers

        if adapter_id is None:
            self._strip_lora(base)
            return
        config = json.loads((entry.path / CONFIG_FILE).read_text(encoding="utf-8"))
        lora, kind = config["lora_parameters"], config.get("fine_tune_type", "lora")
        keys = tuple(lora.get("keys") or ())
        shape = (kind, config["num_layers"], lora["rank"], lora["scale"], keys)
        weights = self._read_adapter(adapter_id, entry)
        if base.lora_shape != shape:
            self._strip_lora(base)
            use_dora = kind == "dora"  # its magnitudes ("m") come with each adapter's weights
            linear_to_lora_layers(base.model, config["num_layers"], lora, use_dora=use_dora)
            base.lora_shape = shape
        params = dict(tree_flatten(base.model.parameters()))
        misfits = [n for n, w in weights.items() if n not in params or params[n].shape != w.shape]
        if misfits:
            raise ModelUnavailable(
                f"adapter unavailable: {len(misfits)} tensor(s) do not fit the base "
                f"({', '.join(misfits[:3])})"
            )
        # layers are reused between adapters of one shape: a tensor the file lacks would keep
        # the previous adapter's values, so every LoRA tensor must come from this file
        missing = sorted(set(lora_layers.tensors(base.model)) - set(weights))
        if missing:
            raise ModelUnavailable(
                f"adapter unavailable: its weights lack {len(missing)} LoRA tensor(s) "
                f"({', '.join(missing[:3])})"
            )
        base.model.load_weights(list(weights.items()), strict=False)
        mx.eval(base.model.parameters())
        base.model.eval()
        base.adapter_id = adapter_id

    def _read_adapter(self, adapter_id: str, entry: ModelEntry) -> dict:
        import mlx.core as mx

        if not self._stale(adapter_id, entry):
            self._adapter_weights.move_to_end(adapter_id)
            return self._adapter_weights[adapter_id][1]
        file = entry.path / WEIGHTS_FILE
        weights = mx.load(str(file))
        self.stats["adapter_reads"] += 1
        self._adapter_weights[adapter_id] = (_mtime(file), weights)
        while len(self._adapter_weights) > 64:
            self._adapter_weights.popitem(last=False)
        return weights

    def _strip_lora(self, base: _Base) -> None:
        if base.lora_shape is not None:
            lora_layers.strip(base.model)
        base.lora_shape = base.adapter_id = None

    def _on_registry_change(self, registry: ModelRegistry) -> None:
        """Release what the registry no longer lists (on the engine thread, where it lives)."""
        entries = registry.entries()
        present = {e.id.removeprefix("lora/") for e in entries if e.kind == "adapter"}
        in_use = {Path(p).resolve() for e in entries for p in (e.path, e.base_path) if p}

        def release() -> None:
            for adapter_id in [a for a in self._adapter_weights if a not in present]:
                del self._adapter_weights[adapter_id]
            for path, base in list(self._bases.items()):
                if base.adapter_id and base.adapter_id not in present:
                    self._strip_lora(base)
                if path not in in_use:
                    del self._bases[path]

        self._jobs.put(release)


def base_path(entry: ModelEntry) -> Path:
    """The folder of the base model an entry runs on (its own, for a base)."""
    return entry.base_path if entry.kind == "adapter" else entry.path


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1.0


def _try(function: Callable[[], Any]) -> Any:
    try:
        return function()
    except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
        return exc
