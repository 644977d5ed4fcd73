"""The one engine interface every backend implements (transformers, vLLM, no-op).

``register(tools, system, template) -> Registration`` builds and keeps the static prefix (the KV cache
of the system turn with the tool schemas). ``decide(handle, turn) -> Decision`` prefills only the
per-tick suffix, decodes the heads as one batch from the shared prefix, and assembles the call.
``decide_batch`` does the same for several (handle, turn) pairs at once: all their heads in one batch
(the policy service uses it to serve many clients with one engine).

Invariants:
* The static prefix is byte-identical from tick to tick; nothing of one tick leaks into the next.
* Each head stops at its closing tag, ``<|null|>`` or ``<|im_end|>`` by token id, and never emits a
  token after its stop token.
* Timings are milliseconds (``time.perf_counter``), keys ``prefill``, ``decode``, ``assemble``,
  ``total``.
* An engine decodes at most ``max_heads`` argument heads (its model's ``tickcall.json`` ``max_heads``,
  6 without it: the public checkpoints). ``register`` refuses a tool with more parameters as a
  ToolSchemaError naming that limit; the heads of a registration are ``format.heads_for`` under it.
"""

from __future__ import annotations

import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tickcall.models.assembly import ASSEMBLY_MODES, Assembled, assemble, is_null_text
from tickcall.models.calls import Call
from tickcall.models.format import Template, Turn, get_template, heads_for
from tickcall.models.tools import MAX_ARITY, ToolSpec, normalize_tools

NO_CALL = "no call"  # the reason of a legal no-call decision (registrations with allow_no_call)


class EngineError(RuntimeError):
    """The engine could not decide (bad handle, backend failure)."""


class UnknownHandleError(EngineError, KeyError):
    """``decide`` named a handle that was never registered (or was dropped)."""


@dataclass
class Registration:
    """A registered tool set: its handle, heads and static-prefix size (tokens)."""

    handle: str
    tools: list[ToolSpec]
    system: str | None
    template: Template
    heads: tuple[str, ...]
    prefix_text: str
    prefix_tokens: int
    state: Any = field(default=None, repr=False)  # backend's cached prefix (KV cache, token ids, ...)
    grammars: Any = field(default=None, repr=False)  # compiled head grammars (models.constrain) or None
    allow_no_call: bool = False  # a null function head is the legal answer "no call this tick"
    assembly: str | None = None  # this tool set's assembly mode; None: the engine's (``Engine.assembly``)

    @property
    def tool_map(self) -> dict[str, ToolSpec]:
        return {t.name: t for t in self.tools}


@dataclass
class Decision:
    """One decided call with everything needed to audit it.

    ``call`` is None when no tool could be identified. ``legal`` is False with ``reason`` when the call
    must not be applied. ``heads`` are the raw decoded texts (stop token excluded; a head stopped by
    ``<|null|>`` reads ``<|null|>``). Token counts: ``prompt_tokens`` = suffix tokens prefilled this
    tick, ``cached_tokens`` = prefix tokens reused, ``generated_tokens`` = per head, stop included.
    With constrained heads (models.constrain): ``grammar_closed`` = heads that reached their token
    budget and were finished by the grammar, ``redecoded`` = argument heads decoded again under the
    chosen tool's grammar. ``confidence``: per head, the smallest probability (after the grammar's
    mask) of a token the model chose, tokens added by grammar closing excluded; empty where the
    backend does not report it (vLLM, stand-ins). A router's signal (ODIA-style cascades).
    """

    call: Call | None
    legal: bool
    reason: str
    heads: dict[str, str]
    head_token_ids: dict[str, list[int]]
    prompt_tokens: int
    cached_tokens: int
    generated_tokens: dict[str, int]
    timings_ms: dict[str, float]
    grammar_closed: list[str] = field(default_factory=list)
    redecoded: list[str] = field(default_factory=list)
    confidence: dict[str, float] = field(default_factory=dict)

    @property
    def min_confidence(self) -> float | None:
        """The smallest chosen-token probability over all heads (None where the backend gives none)."""
        return min(self.confidence.values()) if self.confidence else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["call"] = self.call.to_dict() if self.call else None
        return d


@dataclass
class RawHeads:
    """What a backend returns for one decide before assembly."""

    texts: dict[str, str]
    token_ids: dict[str, list[int]]
    unfinished: set[str]
    prompt_tokens: int
    cached_tokens: int
    prefill_ms: float
    decode_ms: float
    grammar_closed: set[str] = field(default_factory=set)
    redecoded: set[str] = field(default_factory=set)
    confidence: dict[str, float] = field(default_factory=dict)


class Engine(ABC):
    """Base class: shared registration bookkeeping and assembly; backends fill in the model work."""

    backend: str = "abstract"
    default_template: str = "v2"
    # Argument heads the model was trained for. Backends with a model set it from its tickcall.json
    # (``format.max_heads_of``); the default is the public SimpleTool checkpoints' 6.
    max_heads: int = MAX_ARITY

    def __init__(self, max_new_tokens: int = 32, allow_future_refs: bool = False,
                 assembly: str = "strict") -> None:
        if assembly not in ASSEMBLY_MODES:
            raise EngineError(f"assembly must be one of {', '.join(ASSEMBLY_MODES)}, not {assembly!r}")
        self.max_new_tokens = max_new_tokens
        self.allow_future_refs = allow_future_refs  # accept "@fN" argument values (AsyncFC futures)
        self.assembly = assembly  # "strict" (SimpleTool's format rules) or "lenient" (its server's readings)
        self._registrations: dict[str, Registration] = {}
        self._ids = itertools.count(1)

    # ---- public interface -------------------------------------------------------------------
    def register(self, tools: Sequence[Any], system: str | None = None,
                 template: str | None = None, allow_no_call: bool = False,
                 assembly: str | None = None) -> Registration:
        """Normalise tools, render the static prefix and build its cache. Raises ToolSchemaError.

        ``allow_no_call``: a ``<|null|>`` (or empty) function head is a legal answer, "no call this
        tick" (``Decision.call`` None, ``legal`` True, reason ``no call``); otherwise it is illegal.
        ``assembly``: this tool set's mode (``strict``/``lenient``), None for the engine's own; the
        decode is the same either way, only reading the heads differs (the HTTP door asks for lenient)."""
        if assembly is not None and assembly not in ASSEMBLY_MODES:
            raise EngineError(f"assembly must be one of {', '.join(ASSEMBLY_MODES)}, not {assembly!r}")
        specs = normalize_tools(tools, max_arity=self.max_heads)
        tmpl = get_template(template or self.default_template)
        prefix = tmpl.prefix(specs, system)
        reg = Registration(handle=f"h{next(self._ids)}", tools=specs, system=system, template=tmpl,
                           heads=heads_for(specs, max_heads=self.max_heads), prefix_text=prefix,
                           prefix_tokens=0, allow_no_call=allow_no_call, assembly=assembly)
        self._build_prefix(reg)
        self._registrations[reg.handle] = reg
        return reg

    def unregister(self, handle: str) -> None:
        self._registrations.pop(handle, None)

    def registration(self, handle: str) -> Registration:
        try:
            return self._registrations[handle]
        except KeyError:
            raise UnknownHandleError(f"unknown handle {handle!r}: register the tools first") from None

    def decide(self, handle: str, turn: Turn) -> Decision:
        return self.decide_batch([(handle, turn)])[0]

    def decide_batch(self, requests: Sequence[tuple[str, Turn]]) -> list[Decision]:
        """Decide several turns together; all their heads share one batched decode where possible."""
        regs = [self.registration(h) for h, _ in requests]
        t0 = time.perf_counter()
        raws = self._decode(list(zip(regs, [t for _, t in requests], strict=True)))
        t1 = time.perf_counter()
        out = []
        for reg, raw in zip(regs, raws, strict=True):
            ta = time.perf_counter()
            assembled = self._assemble(reg, raw)
            assemble_ms = (time.perf_counter() - ta) * 1e3
            out.append(Decision(
                call=assembled.call, legal=assembled.legal, reason=assembled.reason, heads=raw.texts,
                head_token_ids=raw.token_ids, prompt_tokens=raw.prompt_tokens,
                cached_tokens=raw.cached_tokens,
                generated_tokens={h: len(ids) for h, ids in raw.token_ids.items()},
                timings_ms={"prefill": raw.prefill_ms, "decode": raw.decode_ms,
                            "assemble": assemble_ms, "total": (t1 - t0) * 1e3 + assemble_ms},
                grammar_closed=sorted(raw.grammar_closed), redecoded=sorted(raw.redecoded),
                confidence=dict(raw.confidence),
            ))
        return out

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` under this engine's own tokenizer, without any forward pass (the policy
        service's ``too_long`` check). Backends with ``encode(text) -> ids`` use it; others (NoOpEngine)
        count whitespace-separated words, the unit of their ``prompt_tokens``."""
        encode = getattr(self, "encode", None)
        return len(encode(text)) if callable(encode) else len(text.split())

    def suffix_tokens(self, handle: str, turn: Turn) -> int:
        """Tokens ``decide(handle, turn)`` would prefill (the per-tick suffix). Raises UnknownHandleError."""
        return self.count_tokens(self.registration(handle).template.suffix(turn))

    def prefix_tokens_for(self, tools: Sequence[Any], system: str | None = None,
                          template: str | None = None) -> int:
        """Tokens of the static prefix ``register`` would prefill. Raises ToolSchemaError."""
        tmpl = get_template(template or self.default_template)
        return self.count_tokens(tmpl.prefix(normalize_tools(tools, max_arity=self.max_heads), system))

    def context_tokens(self) -> int | None:
        """The model's context length in tokens (``max_position_embeddings``), None where unknown."""
        config = getattr(getattr(self, "model", None), "config", None)
        n = getattr(config, "max_position_embeddings", None)
        return int(n) if isinstance(n, int) and n > 0 else None

    def info(self) -> dict[str, Any]:
        """Model and template description (sent in the service's ``welcome``)."""
        return {"backend": self.backend, "default_template": self.default_template, "assembly": self.assembly,
                "max_heads": self.max_heads}

    def close(self) -> None:  # noqa: B027 - optional hook; backends without resources keep it
        """Release model memory and any engine processes."""

    # ---- backend hooks ----------------------------------------------------------------------
    def _assemble(self, reg: Registration, raw: RawHeads) -> Assembled:
        """Heads -> call (the registration's assembly mode, else ``self.assembly``). The autoregressive
        baseline parses JSON instead."""
        if reg.allow_no_call and not raw.unfinished and is_null_text(raw.texts.get("function")):
            return Assembled(None, True, NO_CALL, dict(raw.texts))
        return assemble(raw.texts, reg.tool_map, raw.unfinished, allow_future_refs=self.allow_future_refs,
                        mode=reg.assembly or self.assembly)

    @abstractmethod
    def _build_prefix(self, reg: Registration) -> None:
        """Tokenise and prefill ``reg.prefix_text``; set ``reg.prefix_tokens`` and ``reg.state``."""

    @abstractmethod
    def _decode(self, items: list[tuple[Registration, Turn]]) -> list[RawHeads]:
        """Prefill each suffix from its cached prefix and decode all heads; one RawHeads per item."""

