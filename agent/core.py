"""The engine side of the policy service, without sockets or threads: shared registrations and batched
decisions answered with the typed replies of ``agent.messages``.

``agent.server.PolicyServer`` runs one ``PolicyCore`` in its engine thread; ``agent.inproc.InProcPolicy``
runs one in the caller's thread. Both therefore answer the same requests with the same replies.

Invariants:
* A tool set (tools, system, template), byte for byte, has one handle per epoch, whoever registers it;
  at most ``max_registrations`` are kept and each owner holds at most ``max_registrations_per_client``:
  an owner over its quota releases its own least recently registered set; over the server-wide cap the
  registering owner's own sets go first, another client's only when it holds none (size
  ``max_registrations`` >= clients x per-client quota and that never happens).
* Token budgets (``agent.quotas.TokenBudget``) are checked with the engine's tokenizer before any
  forward pass: a tool prefix or a turn over budget is answered ``too_long`` and never reaches the engine.
* ``decide`` answers every job exactly once, in order: ``call``, or ``error`` (``unknown_handle`` for
  a handle dropped after it was queued, ``engine_failure`` for a request the engine could not decide;
  a failing batch is retried request by request, so one bad request fails alone).
* Times: ``recv_t`` and the clocks here are ``time.perf_counter`` seconds; reply timings are ms.
* Hot swap: ``warm`` registers the live tool sets on new weights from any thread while the old engine
  serves; ``switch`` (the thread that uses the core, between two engine steps) then answers from the
  new engine with every handle, heads and epoch unchanged. Every ``call`` reply names its ``weights``.
* Not thread-safe: one thread uses a core (``busy_since`` and ``handles`` may be read from others).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from tickcall.agent import protocol as P
from tickcall.agent import quotas as Q
from tickcall.agent.messages import (
    Bye,
    ByeReply,
    CallReply,
    Decide,
    DecideReply,
    ErrorReply,
    Hello,
    Limits,
    Register,
    Registered,
    ServerInfo,
    Timings,
    Tokens,
    Welcome,
    WireCall,
)
from tickcall.models.format import TEMPLATES, Turn
from tickcall.models.tools import ToolSchemaError

log = logging.getLogger("tickcall.agent.core")


def server_version() -> str:
    """tickcall's installed version (for ``welcome.server``); this room never imports the CLI package."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tickcall")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


# fewest turn tokens a prefill must hold to count for the engine's prefill cost per token
COST_MIN_TOKENS = 32


@dataclass
class Registration:
    """One registered tool set, shared by every owner that registers the same (tools, system, template)."""

    handle: str  # the wire handle: "<epoch prefix>.<n>", never valid in another epoch
    engine_handle: str
    heads: tuple[str, ...]
    prefix_tokens: int
    template: str
    tool_names: list[str]
    key: bytes
    owners: set[Any] = field(default_factory=set)
    request: Register | None = None  # what was registered: a hot swap registers it again on new weights


@dataclass(frozen=True)
class Warmed:
    """One registration made again on a new engine by ``PolicyCore.warm`` (before the switch)."""

    engine_handle: str
    heads: tuple[str, ...]
    prefix_tokens: int


@dataclass
class Job:
    """One decide waiting for the engine. ``owner``: who gets the reply (a ZMQ identity, or anything)."""

    owner: Any
    req: Decide
    turn: Turn
    recv_t: float  # time.perf_counter() at receipt (s): the origin of deadline_ms
    expires_t: float | None = None  # recv_t + deadline (s); None without a deadline
    nbytes: int = 0  # wire size of the request (bytes), counted against the client's queue quota
    # Scheduling state (engine thread; agent.server): suffix tokens still to prefill (None: not yet
    # counted), the turn's first tokens prefilled by ``engine.prefill_chunk`` and the engine they were
    # computed on (a hot swap makes them stale: the turn is then prefilled again on the new engine),
    # and the server's chunk counter when the decide arrived (chunks it waited for = the counter at
    # its batch - this).
    left: int | None = None
    part: Any = None
    part_engine: Any = None
    chunk_seq: int = 0


class PolicyCore:
    """Registrations and decisions of one engine in one epoch."""

    def __init__(
        self,
        engine: Any,
        epoch: str,
        max_registrations: int,
        *,
        max_registrations_per_client: int = 16,
        max_turn_tokens: int = 512,
        max_prefix_tokens: int = 4096,
    ) -> None:
        self.engine = engine
        self.epoch = epoch
        self.max_registrations = max_registrations
        self.max_registrations_per_client = max_registrations_per_client
        self.budget = Q.budget_for(engine, max_turn_tokens, max_prefix_tokens)
        self._max_turn_tokens, self._max_prefix_tokens = max_turn_tokens, max_prefix_tokens
        self.stats: dict[str, int] = {}
        self.batch_sizes: dict[int, int] = {}
        self.busy_since: float | None = None  # perf_counter s while inside engine.decide_batch
        # what a turn token costs to prefill on this engine (ms), a moving average over decided batches
        # (their prefill time over the tokens they prefilled); None until the first batch: the scheduler
        # then treats every turn over the chunk size as long
        self.prefill_ms_per_token: float | None = None
        self.handles: frozenset[str] = frozenset()  # republished after every change (safe to read)
        self._regs: OrderedDict[str, Registration] = OrderedDict()  # LRU order: oldest first
        self._by_key: dict[bytes, str] = {}
        self._reg_ids = 0
        self._info: dict[str, Any] | None = None
        # which weights answer: every ``call`` reply carries it; a hot swap (``switch``) changes it
        self.weights: str = weights_name(engine)

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    @property
    def engine_info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = dict(self.engine.info())
        return self._info

    # ------------------------------------------------------------------ requests
    def welcome(self, req: Hello, limits: Limits) -> Welcome:
        return Welcome(
            id=req.id,
            epoch=self.epoch,
            versions=list(P.SUPPORTED_VERSIONS),
            server=ServerInfo(name="tickcall", version=server_version()),
            engine=self.engine_info,
            templates=list(TEMPLATES),
            limits=limits,
        )

    def register(self, owner: Any, req: Register) -> Registered | ErrorReply:
        """Register (or find) the tool set; ``owner`` keeps it alive until its ``bye``."""
        if req.template is not None and req.template not in TEMPLATES:
            return P.error_reply(
                "malformed",
                f"unknown template {req.template!r}; choose from "
                f"{', '.join(TEMPLATES)} or nil for the engine's default",
                req.id,
                self.epoch,
            )
        key = hashlib.blake2b(
            msgspec.msgpack.encode([req.tools, req.system, req.template, req.allow_no_call, req.assembly]),
            digest_size=16,
        ).digest()
        handle = self._by_key.get(key)
        if handle is not None:
            reg = self._regs[handle]
            self._regs.move_to_end(handle)
        else:
            try:
                refused = self._check_prefix(req)
                if refused is not None:
                    return refused
                # assembly only when asked for: engines of users' own (factory backends) may not take it
                extra = {} if req.assembly is None else {"assembly": req.assembly}
                r = self.engine.register(
                    req.tools,
                    system=req.system,
                    template=req.template,
                    allow_no_call=req.allow_no_call,
                    **extra,
                )
            except ToolSchemaError as exc:
                return P.error_reply("illegal_tools", str(exc)[:1000], req.id, self.epoch)
            except Exception as exc:
                log.exception("engine.register failed")
                return P.error_reply(
                    "engine_failure",
                    f"register failed: {type(exc).__name__}: {exc}"[:1000],
                    req.id,
                    self.epoch,
                )
            self._reg_ids += 1
            reg = Registration(
                handle=f"{self.epoch[:8]}.{self._reg_ids}",
                engine_handle=r.handle,
                heads=tuple(r.heads),
                prefix_tokens=int(r.prefix_tokens),
                template=r.template.name,
                tool_names=[t.name for t in r.tools],
                key=key,
                request=req,
            )
            self._regs[reg.handle] = reg
            self._by_key[key] = reg.handle
            while len(self._regs) > self.max_registrations:
                self._evict_for(owner, keep=reg.handle)
        reg.owners.add(owner)
        self._enforce_client_quota(owner, keep=reg.handle)
        self.handles = frozenset(self._regs)
        return Registered(
            id=req.id,
            epoch=self.epoch,
            handle=reg.handle,
            heads=list(reg.heads),
            head_count=len(reg.heads),
            prefix_tokens=reg.prefix_tokens,
            template=reg.template,
            tools=list(reg.tool_names),
        )

    def _check_prefix(self, req: Register) -> ErrorReply | None:
        """``too_long`` when the tool prefix is over budget (tokens; counted, never prefilled). Counting
        raises what ``engine.register`` would (``ToolSchemaError`` for tools it cannot offer)."""
        n = Q.prefix_tokens(self.engine, req.tools, req.system, req.template)  # raises as register would
        limit = self.budget.prefix_limit()
        if n is None or n <= limit:
            return None
        self._count("too_long")
        return P.error_reply(
            "too_long",
            f"the tool prefix has {n} tokens, the limit is {limit} (max_prefix_tokens, capped by the "
            "model's context): offer fewer tools or shorter descriptions",
            req.id,
            self.epoch,
        )

    def _drop(self, reg: Registration) -> None:
        del self._regs[reg.handle]
        del self._by_key[reg.key]
        self.engine.unregister(reg.engine_handle)

    def _release(self, owner: Any, reg: Registration) -> None:
        """``owner`` lets go of ``reg``; the tool set is dropped when nobody else holds it."""
        reg.owners.discard(owner)
        if not reg.owners:
            self._drop(reg)

    def _evict_for(self, owner: Any, keep: str) -> None:
        """Server-wide cap: drop the oldest set ``owner`` holds, else the oldest of all (not ``keep``)."""
        candidates = [r for h, r in self._regs.items() if h != keep]
        own = [r for r in candidates if owner in r.owners]
        victim = (own or candidates)[0]
        self._count("evicted" if own else "evicted_other_client")
        self._drop(victim)

    def _enforce_client_quota(self, owner: Any, keep: str) -> None:
        """An owner over ``max_registrations_per_client`` releases its own oldest sets (never others')."""
        held = [r for h, r in self._regs.items() if owner in r.owners and h != keep]
        for reg in held[: max(0, len(held) + 1 - self.max_registrations_per_client)]:
            self._count("released_over_quota")
            self._release(owner, reg)

    def bye(self, owner: Any, req: Bye) -> ByeReply:
        """Drop the tool sets that only ``owner`` registered."""
        for handle in list(self._regs):
            reg = self._regs[handle]
            if owner in reg.owners:
                self._release(owner, reg)
        self.handles = frozenset(self._regs)
        return ByeReply(id=req.id, epoch=self.epoch)

    # ------------------------------------------------------------------ decisions
    def decide(self, jobs: list[Job]) -> list[DecideReply]:
        """One reply per job, in order: all live jobs decoded in one ``engine.decide_batch``."""
        replies: list[DecideReply | None] = [None] * len(jobs)
        live: list[int] = []
        for i, job in enumerate(jobs):
            if job.req.handle in self._regs:
                refused = self._check_turn(job)
                if refused is None:
                    live.append(i)
                else:  # answered without a forward pass: never delays the others in the batch
                    replies[i] = refused
            else:  # evicted or dropped (bye) after it was queued
                replies[i] = P.error_reply(
                    "unknown_handle",
                    f"handle {job.req.handle!r} is no longer registered: register the tools again",
                    job.req.id,
                    self.epoch,
                    tick=job.req.tick,
                    handle=job.req.handle,
                )
        if live:
            self._count("batches")
            self._count("decided", len(live))
            self.batch_sizes[len(live)] = self.batch_sizes.get(len(live), 0) + 1
            for i, reply in zip(live, self._decide_live([jobs[i] for i in live]), strict=True):
                replies[i] = reply
        return [r for r in replies if r is not None]

    # ------------------------------------------------------------------ chunked prefill (scheduling)
    @property
    def can_chunk(self) -> bool:
        """Whether the engine can prefill a turn in chunks (``prefill_chunk``; models.hf_engine)."""
        return callable(getattr(self.engine, "prefill_chunk", None))

    def to_prefill(self, job: Job) -> int:
        """Suffix tokens the engine still has to prefill for ``job`` (counted once, with the engine's
        tokenizer, no forward pass; less what its turn-prefix cache would reuse, where the engine says:
        ``uncached_tokens``): 0 for a decide answered without one (handle gone, ``too_long``, a turn the
        template cannot render) and for engines that cannot count tokens."""
        if job.part is not None and job.part_engine is not self.engine:  # computed before a hot swap
            job.part, job.part_engine, job.left = None, None, None
        if job.left is not None:
            return job.left
        reg = self._regs.get(job.req.handle)
        n = None
        if reg is not None:
            try:
                n = Q.suffix_tokens(self.engine, reg.engine_handle, job.turn)
            except Exception:  # answered engine_failure by decide, without a forward pass
                n = None
            if n is not None and n > self.budget.turn_limit(reg.prefix_tokens):
                n = None  # answered too_long by decide
            uncached = getattr(self.engine, "uncached_tokens", None)
            if n and callable(uncached):
                with contextlib.suppress(Exception):  # the count is advisory: the whole turn then
                    n = min(n, int(uncached(reg.engine_handle, job.turn)))
        job.left = int(n or 0)
        return job.left

    def prefill_chunks(self, jobs: list[Job], chunk: int) -> None:
        """Prefill the next ``chunk`` tokens of each job's turn (kept on the job, ``job.left`` updated), in
        one engine call when the engine has ``prefill_chunks`` (one forward per registration). A failing
        call is retried job by job, so a turn that cannot be chunked fails alone: it is logged and left
        to be decoded whole (where it fails, alone, if it must)."""
        live = [j for j in jobs if self._chunkable(j)]
        batched = getattr(self.engine, "prefill_chunks", None)
        if batched is not None and len(live) > 1:
            self.busy_since = t0 = time.perf_counter()
            try:
                done = batched(
                    [(self._regs[j.req.handle].engine_handle, j.turn, j.part) for j in live], chunk
                )
            except Exception as exc:
                log.warning(
                    "batched chunked prefill failed (%s): chunking its %d turns one by one", exc, len(live)
                )
            else:
                self._took_chunks(live, done, t0)
                return
            finally:
                self.busy_since = None
        for job in live:
            self._prefill_one(job, chunk)

    def _chunkable(self, job: Job) -> bool:
        """Whether ``job`` can take a chunk now. A turn whose tool set is gone, or whose part was made
        on weights swapped out since, is reset instead: counted again and prefilled from its start."""
        if job.req.handle in self._regs and (job.part is None or job.part_engine is self.engine):
            return True
        job.part, job.part_engine, job.left = None, None, None
        return False

    def _prefill_one(self, job: Job, chunk: int) -> None:
        reg = self._regs[job.req.handle]
        self.busy_since = t0 = time.perf_counter()
        try:
            done = [self.engine.prefill_chunk(reg.engine_handle, job.turn, job.part, chunk)]
        except Exception as exc:
            log.warning("chunked prefill failed on tick %s (decoded whole instead): %s", job.req.tick, exc)
            job.part, job.part_engine, job.left = None, None, 0
            self._count("prefill_chunk_failures")
            return
        finally:
            self.busy_since = None
        self._took_chunks([job], done, t0)

    def _took_chunks(self, jobs: list[Job], done: list[tuple[Any, int]], t0: float) -> None:
        """Keep each job's new part and tokens left; fold the chunks' time into the cost per token."""
        ms = (time.perf_counter() - t0) * 1e3
        before = [j.left for j in jobs]
        for job, (part, left) in zip(jobs, done, strict=True):
            job.part, job.part_engine, job.left = part, self.engine, int(left)
        if None not in before:
            self._note_prefill_ms(ms, sum(b - j.left for b, j in zip(before, jobs, strict=True)))
        self._count("prefill_chunks", len(jobs))

    def _parts(self, jobs: list[Job]) -> list[Any] | None:
        """The jobs' chunk-prefilled parts on the current engine (None when there are none)."""
        parts = [j.part if j.part is not None and j.part_engine is self.engine else None for j in jobs]
        return parts if any(p is not None for p in parts) else None

    def _engine_decide(self, jobs: list[Job]) -> list[Any]:
        items = [(self._regs[j.req.handle].engine_handle, j.turn) for j in jobs]
        parts = self._parts(jobs)
        if parts is None:
            return self.engine.decide_batch(items)
        self._count("chunked_decides", sum(p is not None for p in parts))
        return self.engine.decide_batch(items, parts=parts)

    def _check_turn(self, job: Job) -> ErrorReply | None:
        """``too_long`` when the decide's suffix is over budget (tokens of the engine's tokenizer)."""
        reg = self._regs[job.req.handle]
        try:
            n = Q.suffix_tokens(self.engine, reg.engine_handle, job.turn)
        except Exception as exc:  # a turn the template cannot render: the engine would fail it too
            return self._engine_failure(job, exc)
        limit = self.budget.turn_limit(reg.prefix_tokens)
        if n is None or n <= limit:
            return None
        self._count("too_long")
        return P.error_reply(
            "too_long",
            f"the turn has {n} tokens, the limit is {limit} (max_turn_tokens, capped by the model's "
            f"context after the {reg.prefix_tokens}-token tool prefix): send a shorter query or history",
            job.req.id,
            self.epoch,
            tick=job.req.tick,
            handle=job.req.handle,
        )

    def _decide_live(self, jobs: list[Job]) -> list[DecideReply]:
        t0 = self.busy_since = time.perf_counter()
        try:
            decisions = self._engine_decide(jobs)
            if len(decisions) != len(jobs):
                raise RuntimeError(f"engine returned {len(decisions)} decisions for {len(jobs)} requests")
        except Exception as exc:
            if len(jobs) == 1:
                self.busy_since = None
                return [self._engine_failure(jobs[0], exc)]
            self._count("batch_retries")
            out: list[DecideReply] = []
            for job in jobs:  # isolate the request that fails
                t0 = time.perf_counter()
                try:
                    d = self._engine_decide([job])[0]
                except Exception as exc1:
                    out.append(self._engine_failure(job, exc1))
                    continue
                out.append(self.call_reply(job, d, t0, time.perf_counter(), 1))
            self.busy_since = None
            return out
        t1 = time.perf_counter()
        self.busy_since = None
        self._note_prefill(decisions)
        return [self.call_reply(j, d, t0, t1, len(jobs)) for j, d in zip(jobs, decisions, strict=True)]

    def _note_prefill(self, decisions: list[Any]) -> None:
        """Fold one batch's prefill (its time over its prefilled tokens) into ``prefill_ms_per_token``."""
        tokens = sum(int(getattr(d, "prompt_tokens", 0) or 0) for d in decisions)
        ms = max((float(d.timings_ms.get("prefill", 0.0)) for d in decisions), default=0.0)
        self._note_prefill_ms(ms, tokens)

    def _note_prefill_ms(self, ms: float, tokens: int) -> None:
        """One prefill of ``tokens`` turn tokens that took ``ms``. Prefills of fewer than
        ``COST_MIN_TOKENS`` tokens are left out: their fixed cost (the heads' tags, one forward's
        overhead) would read as a per-token cost and make every turn look long."""
        if tokens < COST_MIN_TOKENS or ms <= 0:
            return
        x = ms / tokens
        old = self.prefill_ms_per_token
        self.prefill_ms_per_token = x if old is None else 0.8 * old + 0.2 * x

    def prefill_cost_ms(self, tokens: int) -> float | None:
        """The estimated prefill time of ``tokens`` turn tokens (ms), None before any measurement."""
        per = self.prefill_ms_per_token
        return None if per is None else per * tokens

    def _engine_failure(self, job: Job, exc: BaseException) -> ErrorReply:
        log.warning("engine failure on tick %s: %s", job.req.tick, exc)
        return P.error_reply(
            "engine_failure",
            f"{type(exc).__name__}: {exc}"[:1000],
            job.req.id,
            self.epoch,
            tick=job.req.tick,
            handle=job.req.handle,
        )

    def call_reply(self, job: Job, d: Any, t0: float, t1: float, batch: int) -> CallReply:
        """The ``call`` reply for a ``models.engine.Decision`` decoded from ``t0`` to ``t1`` (perf s)."""
        tm = d.timings_ms
        return CallReply(
            id=job.req.id,
            epoch=self.epoch,
            tick=job.req.tick,
            handle=job.req.handle,
            call=None if d.call is None else WireCall(name=d.call.name, arguments=dict(d.call.arguments)),
            legal=bool(d.legal),
            # protocol v1: "" on a legal call (engines say "ok"), "no call" on a legal no-call
            reason="" if d.legal and d.call is not None else d.reason,
            heads=dict(d.heads),
            tokens=Tokens(prompt=d.prompt_tokens, cached=d.cached_tokens, generated=dict(d.generated_tokens)),
            timings_ms=Timings(
                queue=(t0 - job.recv_t) * 1e3,
                prefill=tm.get("prefill", 0.0),
                decode=tm.get("decode", 0.0),
                assemble=tm.get("assemble", 0.0),
                engine=(t1 - t0) * 1e3,
                server=(time.perf_counter() - job.recv_t) * 1e3,
            ),
            batch=batch,
            sent_ms=job.req.sent_ms,
            confidence=getattr(d, "min_confidence", None),
            weights=self.weights,
        )

    # ------------------------------------------------------------------ hot swap
    def registered(self) -> list[tuple[str, Register]]:
        """The live registrations (handle, request) to make again on new weights. Safe to call from
        another thread while the engine thread changes them: a copy, retried if it raced a change."""
        for _ in range(100):
            try:
                regs = list(self._regs.values())
                break
            except RuntimeError:  # "changed size during iteration"
                continue
        else:  # pragma: no cover - the engine thread registering nonstop for 100 tries
            regs = []
        return [(r.handle, r.request) for r in regs if r.request is not None]

    @staticmethod
    def register_on(engine: Any, req: Register) -> Warmed:
        """``req`` registered on ``engine`` (its tool prefix prefilled there). Raises what it raises."""
        extra = {} if req.assembly is None else {"assembly": req.assembly}
        r = engine.register(
            req.tools, system=req.system, template=req.template, allow_no_call=req.allow_no_call, **extra
        )
        return Warmed(r.handle, tuple(r.heads), int(r.prefix_tokens))

    def warm(self, engine: Any) -> dict[str, Warmed]:
        """Register every live registration on ``engine`` (new weights), from any thread: the old engine
        keeps serving meanwhile. Raises ValueError when the new weights would change a registration's
        heads (a swap keeps every handle as it is, heads included), or what ``engine.register`` raises."""
        warmed: dict[str, Warmed] = {}
        for handle, req in self.registered():
            w = self.register_on(engine, req)
            old = self._regs.get(handle)
            if old is not None and w.heads != old.heads:
                raise ValueError(
                    f"the new weights give handle {handle} the heads {list(w.heads)}, not {list(old.heads)}: "
                    "a swap must keep every registration's heads (same tools, same max_heads)"
                )
            warmed[handle] = w
        return warmed

    def switch(self, engine: Any, warmed: dict[str, Warmed], weights: str) -> tuple[Any, list[str]]:
        """Engine thread, between two engine steps: answer from ``engine`` from now on, every handle kept.

        Registrations made after ``warm`` took its copy are registered now (on the engine thread); one
        that fails there is dropped (its clients get ``unknown_handle`` and register again). Returns the
        old engine (the caller closes it) and the handles dropped."""
        dropped: list[str] = []
        for handle, reg in list(self._regs.items()):
            w = warmed.pop(handle, None)
            if w is None:
                try:
                    assert reg.request is not None
                    w = self.register_on(engine, reg.request)
                except Exception as exc:
                    log.warning("swap: handle %s could not be registered on the new weights: %s", handle, exc)
                    del self._regs[handle]
                    del self._by_key[reg.key]
                    dropped.append(handle)
                    continue
            reg.engine_handle, reg.heads, reg.prefix_tokens = w.engine_handle, w.heads, w.prefix_tokens
        for w in warmed.values():  # registrations released while the new engine warmed
            with contextlib.suppress(Exception):
                engine.unregister(w.engine_handle)
        old, self.engine = self.engine, engine
        self.prefill_ms_per_token = None  # other weights, another cost per token: measured again
        self._info = None
        self.budget = Q.budget_for(engine, self._max_turn_tokens, self._max_prefix_tokens)
        self.weights = weights
        self.handles = frozenset(self._regs)
        self._count("swaps")
        return old, dropped


def weights_name(engine: Any) -> str:
    """A short name for an engine's weights: its model folder's name, else its backend."""
    try:
        info = dict(engine.info())
    except Exception:
        info = {}
    model = info.get("model")
    if model:
        return Path(str(model)).name or str(model)
    return str(info.get("backend") or type(engine).__name__)
