"""The transformers backend: loads a local checkpoint folder and decodes SimpleTool heads with the
lean loop of ``models.lean`` (CPU or CUDA).

Per registration the static prefix is tokenised and prefilled once; its KV cache is kept.
Per decide: the suffix (user turn) is tokenised and prefilled on top of the cached prefix together
with one opening tag per head (tree mask), then all heads of all requests decode greedily as one
batch; a head leaves the batch at its stop token (closing tag, ``<|null|>``, ``<|im_end|>``: by id).
With a turn-prefix cache (``turn_cache``, models.turn_cache) a turn's first tokens shared with an
earlier turn of the same registration bring their K/V instead of being prefilled again.

Chunked prefill (the policy service's fairness, issue 19): ``prefill_chunk`` prefills the next tokens
of one turn's suffix on top of what an earlier call returned (a ``models.lean.Reused``, kept by the
caller), and ``decide_batch(requests, parts=...)`` then decodes the turn with its remaining tokens only:
a long turn is prefilled over several engine steps with other batches decoded in between. Exact by
causality, as the turn-prefix cache (up to floating point; tests compare the greedy tokens).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tickcall.models.constrain import Constrainer, RowGuide, forced_stop, mask_logits
from tickcall.models.cpu_features import PRECISIONS, choose_precision, cpu_flags
from tickcall.models.engine import Engine, EngineError, RawHeads, Registration
from tickcall.models.format import CHAT_TOKENS, IM_END, NULL, Turn, close_tag, open_tag, special_tokens
from tickcall.models.lean import LeanLM, Reused
from tickcall.models.loading import model_max_heads, read_model_meta
from tickcall.models.tools import MAX_ARITY
from tickcall.models.turn_cache import TurnCache

# Below this many parameters the CPU backend runs torch on one thread by default. Measured with the
# shipped 0.7M model on the 2-core VM while other work ran: decide P50 6.9 ms on 1 thread, 320 ms on 2.
SMALL_MODEL_PARAMS = 50_000_000
# Turn-prefix cache entries per registration for models of SMALL_MODEL_PARAMS and more (models.turn_cache).
# Small models keep it off: their whole prefill costs about a millisecond, less than the bookkeeping.
TURN_CACHE_ENTRIES = 8
#: texts whose token ids ``HFEngine.encode`` keeps (a tick's turn is encoded up to 4 times)
ENCODE_MEMO = 256


class TokenizerFormatError(EngineError):
    """The tokenizer does not hold the SimpleTool tokens as single ids."""


def check_special_tokens(tokenizer, max_heads: int = MAX_ARITY) -> dict[str, int]:
    """Each SimpleTool token of a model with ``max_heads`` argument heads (``format.special_tokens``:
    the 17 of the public checkpoints for 6) and the chat tokens must be exactly one id. Returns the ids."""
    ids: dict[str, int] = {}
    bad = []
    for tok in (*special_tokens(max_heads), *CHAT_TOKENS):
        enc = tokenizer.encode(tok, add_special_tokens=False)
        if len(enc) != 1:
            bad.append(f"{tok} -> {len(enc)} tokens")
        else:
            ids[tok] = enc[0]
    if bad:
        raise TokenizerFormatError(
            "this tokenizer does not hold the SimpleTool tokens as single tokens ("
            + "; ".join(bad)
            + f"; {max_heads} argument heads expected). Use a SimpleTool checkpoint (RT-Qwen) "
            "or a model trained by tickcall, whose tickcall.json max_heads matches its tokenizer."
        )
    return ids


def pick_device(device: str | None) -> str:
    if device and device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


class HFEngine(Engine):
    """SimpleTool decoding with transformers weights and the lean loop.

    ``model_path``: a local folder (config.json, safetensors, tokenizer). ``device``: "cpu", "cuda"
    or "auto". ``dtype``: defaults to float32 on CPU and bfloat16 on CUDA; given, it is the format
    (no fast path). ``precision`` (CPU): "fp32", "bf16" (weights and activations), "int8" (dynamic-
    quantized projections and LM head, models.lean) or "auto": models under ``SMALL_MODEL_PARAMS`` stay
    float32 (the shipped students are unchanged), bigger ones take the format ``models.cpu_features``
    picks for this CPU; ``info()`` reports ``precision`` and ``fast_path_reason``. ``jump_forward``:
    finish a constrained head without a forward when only its stop may follow (models.constrain rule
    4; default: on for models of ``SMALL_MODEL_PARAMS`` and more). ``canonical_literals``: a head whose
    values are a finite set of literals (tool names, string enums) writes each only as the tokenizer
    spells it (models.constrain rule 5; default off: the calls are then exactly the unrestricted
    greedy ones); with jump-forward it saves the forward that follows a value that is another's prefix
    in characters only (SmolLM2's ``N`` beside ``NE``). ``turn_cache``: turn-prefix cache
    entries per registration (models.turn_cache: a turn's first tokens shared with an earlier turn of
    the same registration are not prefilled again; 0 = off; default ``TURN_CACHE_ENTRIES`` for models
    of ``SMALL_MODEL_PARAMS`` and more, 0 for smaller ones); ``Decision.cached_tokens`` then counts the
    reused turn tokens too, ``prompt_tokens`` only those prefilled, and ``info()["turn_cache"]`` the
    totals. ``threads``: torch CPU
    threads (None: 1 for models under 50M parameters on CPU, else torch's default; process-wide).
    ``max_new_tokens``: per head budget. ``allow_future_refs``: accept ``@fN`` argument values (see
    models.assembly). ``constrain``: decode every head under its schema grammar (models.constrain;
    default on: greedy output that is already legal is unchanged, illegal output becomes legal).
    ``assembly``: "strict" (default) or "lenient" (models.assembly).
    """

    backend = "transformers"

    def __init__(
        self,
        model_path: str | Path,
        *,
        device: str | None = "auto",
        dtype: str | None = None,
        threads: int | None = None,
        max_new_tokens: int = 32,
        template: str | None = None,
        allow_future_refs: bool = False,
        constrain: bool = True,
        assembly: str = "strict",
        precision: str = "auto",
        jump_forward: bool | None = None,
        turn_cache: int | None = None,
        canonical_literals: bool = False,
    ) -> None:
        super().__init__(
            max_new_tokens=max_new_tokens, allow_future_refs=allow_future_refs, assembly=assembly
        )
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path = Path(model_path)
        if not (self.model_path / "config.json").exists():
            raise EngineError(f"{self.model_path} is not a model folder (no config.json)")
        self.device = pick_device(device)
        if precision not in PRECISIONS:
            raise EngineError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.device != "cpu" and precision not in ("auto", "bf16"):
            raise EngineError(
                f"precision {precision!r} is for the CPU; on {self.device} the model runs in bf16 "
                "(or pass dtype)"
            )
        torch_dtype = (
            getattr(torch, dtype) if dtype else (torch.bfloat16 if self.device == "cuda" else torch.float32)
        )
        self.meta = read_model_meta(self.model_path)
        self.max_heads = model_max_heads(self.model_path, self.meta)
        self.default_template = template or self.meta.get("template", "v2")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.token_ids = check_special_tokens(self.tokenizer, self.max_heads)
        from tickcall.models.quantize_load import (
            transformers_load_kwargs,  # W4A16 (compressed-tensors): dequantized
        )

        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=torch_dtype, **transformers_load_kwargs(self.model_path)
        ).to(self.device)
        self.model.eval()
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.precision, self.fast_path_reason = self._pick_precision(precision, dtype)
        if self.device == "cpu":  # int8 packs from float32 weights; its activations stay float32
            want = torch.bfloat16 if self.precision == "bf16" else torch.float32
            if self.model.dtype != want:
                self.model.to(want)
        self.lm = LeanLM(self.model, int8=self.precision == "int8")
        self._fast = getattr(self.tokenizer, "_tokenizer", None)  # the Rust tokenizer: no Python wrapping
        # the service counts a queued turn's tokens (too_long check, chunk planning) before the decide
        # encodes it again: 3-4 encodes of one text per tick, 0.13-0.19 ms each on a 2-core EPYC
        self._encoded: dict[str, tuple[int, ...]] = {}
        self.forced_lengths: dict[str, int] | None = None  # benchmarks only: decode exactly N tokens
        # constrained rows whose grammar allows only a stop next finish without a forward (constrain
        # rule 4). Default: on for models of SMALL_MODEL_PARAMS and more (a step costs tens of ms); off
        # for small ones (a step costs ~1 ms, and their head token ids stay those of vLLM, which picks
        # the stop token with the model: the calls are the same either way)
        self.jump_forward = self.n_params >= SMALL_MODEL_PARAMS if jump_forward is None else jump_forward
        if turn_cache is None:
            turn_cache = TURN_CACHE_ENTRIES if self.n_params >= SMALL_MODEL_PARAMS else 0
        if not isinstance(turn_cache, int) or turn_cache < 0:
            raise EngineError(f"turn_cache {turn_cache!r}: give a number of entries >= 0 (0 = off)")
        self.turn_cache = turn_cache
        self._parts: list[Reused | None] | None = None  # decide_batch's parts, read by _decode
        self._turn_caches: dict[str, TurnCache] = {}  # registration handle -> its turn-prefix cache
        if threads is None and self.device == "cpu" and self.n_params < SMALL_MODEL_PARAMS:
            threads = 1  # tiny matmuls: a second thread only adds synchronisation (and stalls under load)
        if threads:
            torch.set_num_threads(threads)
        if canonical_literals and not constrain:
            raise EngineError("canonical_literals restricts the constrained decode: it needs constrain on")
        self.constrainer = (
            Constrainer(self.tokenizer, self.lm.vocab, self.token_ids, canonical=bool(canonical_literals))
            if constrain
            else None
        )

    def _pick_precision(self, precision: str, dtype: str | None) -> tuple[str, str]:
        """(precision, why) on this device for this model (see the class docstring)."""
        loaded = {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(self.model.dtype, str(self.model.dtype))
        if self.device != "cpu":
            return loaded, f"{loaded}: {self.device}"
        if precision != "auto":
            return precision, f"{precision}: asked for"
        if dtype:
            return loaded, f"{loaded}: dtype given"
        if self.n_params < SMALL_MODEL_PARAMS:
            return (
                "fp32",
                f"fp32: small model ({self.n_params / 1e6:.1f}M params < {SMALL_MODEL_PARAMS / 1e6:.0f}M)",
            )
        return choose_precision(cpu_flags())

    # ---------------------------------------------------------------- helpers
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added), memoised for the last ``ENCODE_MEMO`` texts."""
        ids = self._encoded.get(text)
        if ids is None:
            if self._fast is not None:
                ids = tuple(self._fast.encode(text, add_special_tokens=False).ids)
            else:
                ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
            if len(self._encoded) >= ENCODE_MEMO:  # turns rarely repeat: forget all, not LRU bookkeeping
                self._encoded.clear()
            self._encoded[text] = ids
        return list(ids)

    def decode_ids(self, ids: list[int]) -> str:
        if self._fast is not None:
            return self._fast.decode(ids, skip_special_tokens=False)
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def stop_ids(self, head: str) -> tuple[int, int, int]:
        t = self.token_ids
        return (t[close_tag(head)], t[NULL], t[IM_END])

    def info(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "backend": self.backend,
            "model": str(self.model_path),
            "model_type": cfg.model_type,
            "params": self.n_params,
            "device": self.device,
            "dtype": str(self.lm.dtype).replace("torch.", ""),
            "precision": self.precision,
            "fast_path_reason": self.fast_path_reason,
            "default_template": self.default_template,
            "constrained": self.constrainer is not None,
            "canonical_literals": self.constrainer is not None and self.constrainer.canonical,
            "jump_forward": self.jump_forward,
            "max_heads": self.max_heads,
            "assembly": self.assembly,
            "turn_cache": self.turn_cache_info(),
        }

    def turn_cache_info(self) -> dict[str, int]:
        """The turn-prefix caches of all live registrations: entries per registration (the setting),
        entries and turn tokens held now, and lookups, hits, reused and prefilled suffix tokens so far
        (registrations dropped since are not counted)."""
        caches = [c for h, c in self._turn_caches.items() if h in self._registrations]
        return {
            "entries_per_registration": self.turn_cache,
            "entries": sum(len(c.entries) for c in caches),
            "held_tokens": sum(c.held_tokens() for c in caches),
            "lookups": sum(c.stats.lookups for c in caches),
            "hits": sum(c.stats.hits for c in caches),
            "reused_tokens": sum(c.stats.reused_tokens for c in caches),
            "prefilled_tokens": sum(c.stats.prefilled_tokens for c in caches),
        }

    def unregister(self, handle: str) -> None:
        super().unregister(handle)
        self._turn_caches.pop(handle, None)  # its K/V were computed on that registration's prefix

    def _turn_cache_of(self, reg: Registration) -> TurnCache | None:
        if not self.turn_cache:
            return None
        cache = self._turn_caches.get(reg.handle)
        if cache is None:
            for h in [h for h in self._turn_caches if h not in self._registrations]:
                del self._turn_caches[h]  # registrations dropped without unregister (close, tests)
            cache = self._turn_caches[reg.handle] = TurnCache(self.turn_cache)
        return cache

    def close(self) -> None:
        self._registrations.clear()
        self._turn_caches.clear()
        del self.lm, self.model
        if self.device == "cuda":
            torch.cuda.empty_cache()

    # ---------------------------------------------------------------- engine hooks
    def _build_prefix(self, reg: Registration) -> None:
        ids = self.encode(reg.prefix_text)
        reg.state = self.lm.prefill_prefix(ids)
        reg.prefix_tokens = len(ids)
        if self.constrainer is not None:
            reg.grammars = self.constrainer.compile(reg.tools, reg.heads, reg.allow_no_call)

    @torch.inference_mode()
    def prefill_chunk(
        self, handle: str, turn: Turn, part: Reused | None, chunk: int
    ) -> tuple[Reused | None, int]:
        """Prefill the next ``chunk`` (>= 1) tokens of ``turn``'s suffix on ``handle``'s prefix, on top
        of ``part`` (the suffix's first ``part.tokens`` already prefilled by an earlier call; None: none).
        Returns (the new part, the suffix tokens still to prefill). The suffix's last token is always
        left to ``decide_batch`` (the heads' tags must be prefilled with it), so the tokens left are >= 1;
        with nothing to do the part comes back as it was. Raises UnknownHandleError."""
        return self.prefill_chunks([(handle, turn, part)], chunk)[0]

    def uncached_tokens(self, handle: str, turn: Turn) -> int:
        """The suffix tokens a decide of ``turn`` would prefill now: ``suffix_tokens`` less what the
        registration's turn-prefix cache would reuse (a peek: no lookup is counted). On the goal arena
        a tick's turn repeats the episode's goal sentence, so only its state line is new. Raises
        UnknownHandleError."""
        reg = self.registration(handle)
        ids = self.encode(reg.template.suffix(turn))
        cache = self._turn_caches.get(reg.handle) if self.turn_cache else None
        return len(ids) - (cache.peek(ids) if cache is not None else 0)

    def prefill_chunks(
        self, items: list[tuple[str, Turn, Reused | None]], chunk: int
    ) -> list[tuple[Reused | None, int]]:
        """``prefill_chunk`` for several turns at once: the next ``chunk`` tokens of each, the turns of
        one registration in one forward (``LeanLM.prefill_group`` over their parts), so k turns cost
        one pass over the weights per registration, not k. Same results, per item, as ``prefill_chunk``.
        Raises UnknownHandleError."""
        out: list[tuple[Reused | None, int] | None] = [None] * len(items)
        groups: dict[str, list[tuple[int, list[int], int, int]]] = {}
        for i, (handle, turn, part) in enumerate(items):
            reg = self.registration(handle)
            ids = self.encode(reg.template.suffix(turn))
            done = part.tokens if part is not None else 0
            end = min(done + max(1, int(chunk)), len(ids) - 1)
            if end <= done:
                out[i] = (part, len(ids) - done)
            else:
                groups.setdefault(handle, []).append((i, ids, done, end))
        for handle, rows in groups.items():
            reg = self.registration(handle)
            parts = [items[i][2] for i, *_ in rows]
            g = self.lm.prefill_group(
                [ids[done:end] for _, ids, done, end in rows],
                reg.state,
                [],
                parts if any(p is not None for p in parts) else None,
            )
            for j, (i, ids, _, end) in enumerate(rows):
                k, v = g.request_kv(j)
                out[i] = (Reused(end, k, v), len(ids) - end)
        return [o for o in out if o is not None]

    def decide_batch(
        self, requests: list[tuple[str, Turn]], parts: list[Reused | None] | None = None
    ) -> list:
        """``Engine.decide_batch``; ``parts``: per request, the suffix's first tokens already prefilled
        by ``prefill_chunk`` for that very turn on this engine (None: none), so only the rest is
        prefilled here (the turn-prefix cache is not consulted for such a request)."""
        self._parts = list(parts) if parts is not None else None
        try:
            return super().decide_batch(requests)
        finally:
            self._parts = None

    @torch.inference_mode()
    def _decode(self, items: list[tuple[Registration, Turn]]) -> list[RawHeads]:
        t0 = time.perf_counter()
        pinned = self._parts if self._parts is not None else [None] * len(items)
        suffixes = [self.encode(reg.template.suffix(turn)) for reg, turn in items]
        by_reg: dict[str, list[int]] = {}  # requests sharing a registration prefill together
        for i, (reg, _) in enumerate(items):
            by_reg.setdefault(reg.handle, []).append(i)
        reused = [0] * len(items)  # turn tokens taken from the turn-prefix cache, per item
        groups, row_item, row_head = [], [], []
        for idxs in by_reg.values():
            reg = items[idxs[0]][0]
            tags = [self.token_ids[open_tag(h)] for h in reg.heads]
            cache = self._turn_cache_of(reg)
            if cache is None and not any(pinned[i] is not None for i in idxs):
                groups.append(self.lm.prefill_group([suffixes[i] for i in idxs], reg.state, tags))
            else:  # one group still: each request brings its own reused K/V (lean.prefill_group)
                parts: list[Reused | None] = []
                for i in idxs:
                    pin = pinned[i]
                    if pin is not None:  # prefilled in chunks (prefill_chunk): exactly this turn's tokens
                        reused[i] = pin.tokens
                        parts.append(pin)
                        continue
                    key, n_reused = cache.lookup(suffixes[i]) if cache is not None else (None, 0)
                    reused[i] = n_reused
                    e = cache.entries[key] if cache is not None and key is not None else None
                    parts.append(Reused(n_reused, e.k, e.v) if e is not None else None)
                news = [suffixes[i][reused[i] :] for i in idxs]
                g = self.lm.prefill_group(news, reg.state, tags, parts if any(parts) else None)
                groups.append(g)
                if cache is not None:
                    for j, i in enumerate(idxs):
                        cache.store(suffixes[i], *g.request_kv(j))
            for i in idxs:
                row_item.extend([i] * len(reg.heads))
                row_head.extend(reg.heads)
        first_logits = torch.cat([g.logits.reshape(-1, g.logits.shape[-1]) for g in groups])
        suffix_lens = [len(x) for x in suffixes]
        if self.device == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()

        # rows: every head of every request, ordered by group, request, head
        n = len(row_head)
        run = _Rows(generated=[[] for _ in range(n)], finished=[False] * n, confidence=[1.0] * n)
        forced = self.forced_lengths
        budget = max(forced.get(h, 1) for h in row_head) if forced else self.max_new_tokens
        run.limits = [forced.get(h, 1) if forced else budget for h in row_head]
        run.stops = [self.stop_ids(h) for h in row_head]
        closed: set[int] = set()
        redo: list[int] = []
        if self.constrainer is not None and not forced:
            chosen: dict[int, str] = {}  # item -> tool its function head chose
            rows_of = {i: [r for r in range(n) if row_item[r] == i] for i in range(len(items))}
            run.guides = [
                RowGuide(self.constrainer, h, items[row_item[r]][0].grammars.start[h])
                for r, h in enumerate(row_head)
            ]

            def resolved(r: int) -> None:  # a function head stopped: shadow its item's argument rows
                i = row_item[r]
                tool = self.constrainer.chosen_tool(run.generated[r], self.decode_ids, items[i][0].grammars)
                if tool is None:
                    return
                chosen[i] = tool
                for a in rows_of[i]:
                    g = run.guides[a]
                    if g.head == "function" or run.finished[a]:
                        continue
                    g.shadow = self.constrainer.matcher(g.head, items[i][0].grammars.chosen[(tool, g.head)])
                    g.dead = not all(g.shadow.accept_token(t) for t in run.generated[a])

            run.on_function_done = resolved
            self._greedy(groups, list(range(n)), first_logits.clone(), run, budget)
            for r in range(n):  # heads cut at the budget are finished by their grammar
                if not run.finished[r] and not run.guides[r].dead:
                    self._close(r, run, closed)
                    if row_head[r] == "function" and run.finished[r]:
                        resolved(r)
            for i, tool in chosen.items():  # argument heads the chosen tool does not accept
                reg = items[i][0]
                for a in rows_of[i]:
                    head = row_head[a]
                    if head != "function" and (
                        run.guides[a].dead
                        or not self.constrainer.accepts(
                            head, reg.grammars.chosen[(tool, head)], run.generated[a]
                        )
                    ):
                        redo.append(a)
                        run.guides[a] = RowGuide(self.constrainer, head, reg.grammars.chosen[(tool, head)])
                        run.generated[a], run.finished[a], run.confidence[a] = [], False, 1.0
                        closed.discard(a)
            if redo:
                run.on_function_done = None
                self._greedy(groups, redo, first_logits[redo], run, budget)
                for r in redo:
                    if not run.finished[r]:
                        self._close(r, run, closed)
        else:
            self._greedy(groups, list(range(n)), first_logits, run, budget)
        t2 = time.perf_counter()

        out: list[RawHeads] = []
        null_id = self.token_ids[NULL]
        for i, (reg, _) in enumerate(items):
            texts, ids_map, unfinished, grammar_closed, redecoded = {}, {}, set(), set(), set()
            confidence: dict[str, float] = {}
            for r, (it, head) in enumerate(zip(row_item, row_head, strict=True)):
                if it != i:
                    continue
                ids = run.generated[r]
                ids_map[head] = ids
                confidence[head] = run.confidence[r]
                if r in closed:
                    grammar_closed.add(head)
                if r in redo:
                    redecoded.add(head)
                if not run.finished[r]:
                    unfinished.add(head)
                body = ids[:-1] if (run.finished[r] and not forced) else ids
                if run.finished[r] and not forced and ids[-1] == null_id:
                    texts[head] = NULL
                else:
                    texts[head] = self.decode_ids(body)
            out.append(
                RawHeads(
                    texts=texts,
                    token_ids=ids_map,
                    unfinished=unfinished,
                    prompt_tokens=suffix_lens[i] - reused[i],
                    cached_tokens=reg.prefix_tokens + reused[i],
                    prefill_ms=(t1 - t0) * 1e3,
                    decode_ms=(t2 - t1) * 1e3,
                    grammar_closed=grammar_closed,
                    redecoded=redecoded,
                    confidence=confidence,
                )
            )
        return out

    def _close(self, r: int, run: _Rows, closed: set[int]) -> None:
        """Finish row ``r`` (cut at its budget) by its grammar, without the model."""
        g = run.guides[r]
        path = self.constrainer.close(g.head, g.rule, run.generated[r])
        if path:
            run.generated[r].extend(path)
            run.finished[r] = True
            closed.add(r)

    def _jump(self, r: int, run: _Rows) -> None:
        """Finish row ``r`` with its closing tag when its grammar allows only a stop next
        (models.constrain rule 4). The forced token counts as probability 1 for the confidence."""
        g = run.guides[r]
        tok = forced_stop(self.constrainer, g, self.token_ids[close_tag(g.head)])
        if tok is None:
            return
        g.accept(tok)
        run.generated[r].append(tok)
        run.finished[r] = True
        run.jumped += 1

    def _greedy(self, groups: list, rows: list[int], logits: torch.Tensor, run: _Rows, budget: int) -> None:
        """Greedy decode of ``rows`` (row indices, ascending) from their first-token ``logits``.

        A row stops at a stop id, at its limit, or (constrained) when the chosen tool's grammar has
        rejected its prefix (``RowGuide.dead``). Fills ``run.generated`` / ``run.finished``."""
        guides = run.guides
        live = list(rows)
        rb = None
        forced = self.forced_lengths
        while True:
            if guides is not None:
                logits = logits.float()
                mask_logits(self.constrainer, [guides[r] for r in live], logits)
            chosen = logits.argmax(-1)
            next_tok = chosen.tolist()
            if not forced:  # the probability of each greedy token, for Decision.confidence
                probs = torch.softmax(logits.float(), dim=-1).gather(1, chosen[:, None])[:, 0].tolist()
                for slot, p in enumerate(probs):
                    r = live[slot]
                    run.confidence[r] = min(run.confidence[r], p)
            for slot, r in enumerate(live):
                tok = next_tok[slot]
                run.generated[r].append(tok)
                if guides is not None:
                    g = guides[r]
                    g.accept(tok)
                # forced (benchmarks): exactly limits[r] tokens; otherwise a stop id or the budget
                stops = guides[r].stops if guides is not None else run.stops[r]
                run.finished[r] = len(run.generated[r]) >= run.limits[r] if forced else tok in stops
                if (
                    not run.finished[r]
                    and guides is not None
                    and self.jump_forward
                    and not guides[r].dead
                    and len(run.generated[r]) < run.limits[r]
                ):
                    self._jump(r, run)  # only a stop may follow: finish the row without a forward
                if run.finished[r] and run.on_function_done is not None and guides[r].head == "function":
                    run.on_function_done(r)
            still = [
                slot
                for slot, r in enumerate(live)
                if not run.finished[r]
                and len(run.generated[r]) < run.limits[r]
                and not (guides is not None and guides[r].dead)
            ]
            if not still:
                return
            if rb is None:
                rb = self.lm.rows(groups, budget)
                if len(rows) < rb.ctx_len.shape[0]:
                    rb.keep(rows)
            if len(still) < len(live):
                rb.keep(still)
            live = [live[s] for s in still]
            tokens = torch.tensor([run.generated[r][-1] for r in live], device=self.lm.device)
            logits = self.lm.step(rb, tokens)


@dataclass
class _Rows:
    """The state of one decide's rows (every head of every request)."""

    generated: list[list[int]]
    finished: list[bool]
    confidence: list[float]  # per row: the smallest probability of a token it chose (after the mask)
    limits: list[int] = field(default_factory=list)
    stops: list[tuple[int, ...]] = field(default_factory=list)
    guides: list[RowGuide] | None = None
    on_function_done: Callable[[int], None] | None = None
    jumped: int = 0  # rows finished by a jump-forward stop (no forward pass for it)
