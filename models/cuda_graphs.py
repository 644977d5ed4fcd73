"""CUDA graphs for the lean decode step: one captured graph per static batch layout, replayed per token.

Why: on a GPU a small model's decode step is launch-bound (about fifteen kernels per layer, 30 layers:
hundreds of launches of a few microseconds each for a step whose arithmetic takes less). A CUDA graph
replays the whole step as one launch. A graph needs static shapes and static addresses, so this module
runs the step of ``models.lean`` on fixed buffers:

* rows (every head of every request) are padded up to a power of two per prefix group; padding rows
  compute junk that is never read;
* each row's own-token K/V buffer has room for the whole budget and attention masks the positions not
  yet written (``j > t``) instead of slicing ``[: t + 1]``: the softmax is the same, masked terms add 0;
* the suffix K/V of each group is padded to a multiple of ``SUFFIX_BUCKET`` tokens (masked);
* the step counter ``t`` and the positions live in device tensors, RoPE comes from a table of
  ``max_positions`` rows built once;
* finished rows are not dropped (``keep`` only changes which rows' logits are returned).

``GraphedLM(lm, max_positions)`` stands in for ``LeanLM`` where the transformers backend decodes
(``rows``, ``step``; every other attribute passes through), so the engine is used as it is:
``engine.lm = GraphedLM(engine.lm, ...)``. Graphs are keyed by layout (prefix tensors, padded rows and
suffix width per group, budget) and kept in a small LRU; the first step of a new layout captures.

Falls back cleanly: without CUDA, or when a capture fails, ``GraphedLM`` delegates to the plain lean
step and says why in ``fallback``. ``capture=False`` runs the static-shape step eagerly (tests on CPU
compare it token for token with the lean step).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

SUFFIX_BUCKET = 32  # suffix tokens are padded to a multiple of this (a new turn length rarely re-captures)
MAX_GRAPHS = 8  # layouts kept captured (each holds its buffers and a memory pool)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# The step's pieces (the lean model's segment attention), kept here rather than borrowed from LeanLM's
# private helpers: its own passes may change kernels, and the static step must not break when they do.
def _linear(lw: Any, name: str, x: torch.Tensor) -> torch.Tensor:
    """A layer's projection ``name`` ("qkv", "o"): its callable where the lean model has one, else its
    dense weight (and bias)."""
    fn = getattr(lw, name, None)
    if callable(fn):
        return fn(x)
    return F.linear(x, getattr(lw, f"w_{name}"), getattr(lw, f"b_{name}", None))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def _qkv(lm: Any, lw: Any, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """h [B, 1, H] -> q [B, kv, g, 1, d], k/v [B, kv, 1, d] with RoPE (cos/sin [B, 1, d]), the numerics
    of the transformers implementations (q/k RMSNorm where the model has it)."""
    q, k, v = _linear(lw, "qkv", h).split([lm.q_size, lm.kv_size, lm.kv_size], dim=-1)
    b, t = h.shape[0], h.shape[1]
    q = q.view(b, t, lm.n_heads, lm.head_dim)
    k = k.view(b, t, lm.n_kv, lm.head_dim)
    v = v.view(b, t, lm.n_kv, lm.head_dim)
    if lw.q_norm is not None:
        q, k = lm._rms(q, lw.q_norm), lm._rms(k, lw.k_norm)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # [B, T, 1, d]
    q = _rotate(q, cos, sin).permute(0, 2, 1, 3)  # [B, heads, T, d]
    k = _rotate(k, cos, sin).permute(0, 2, 1, 3)  # [B, kv, T, d]
    return q.reshape(b, lm.n_kv, lm.group, t, lm.head_dim), k, v.permute(0, 2, 1, 3)


def _attend(lm: Any, q: torch.Tensor, segments: list) -> torch.Tensor:
    """Softmax attention of q [B, kv, g, T, d] over K/V segments that are never copied: (K, V, mask)
    with K/V [kv, L, d] shared by every row (the cached prefix) or [B, kv, L, d] per row; ``mask``
    (bool, True = visible) broadcasts to [B, kv, g, T, L], or None. Returns [B, T, heads * d]."""
    b, kv, g, t, d = q.shape
    q_kv = None  # q as [kv, B*g*T, d] for shared segments: one bmm per kv head, K never expanded
    scores = []
    for k, _, mask in segments:
        if k.dim() == 3:
            if q_kv is None:
                q_kv = q.permute(1, 0, 2, 3, 4).reshape(kv, b * g * t, d)
            sc = torch.bmm(q_kv, k.transpose(1, 2)).view(kv, b, g, t, -1).permute(1, 0, 2, 3, 4)
        else:
            sc = torch.matmul(q, k.unsqueeze(2).transpose(-1, -2))
        if mask is not None:
            sc = sc.masked_fill(~mask, float("-inf"))
        scores.append(sc)
    sizes = [sc.shape[-1] for sc in scores]
    probs = torch.softmax(torch.cat(scores, dim=-1).float() * lm.scaling, dim=-1).to(q.dtype)
    out = None
    for p, (k, v, _) in zip(probs.split(sizes, dim=-1), segments, strict=True):
        if k.dim() == 3:
            part = torch.bmm(p.permute(1, 0, 2, 3, 4).reshape(kv, b * g * t, -1), v)
            part = part.view(kv, b, g, t, d).permute(1, 0, 2, 3, 4)
        else:
            part = torch.matmul(p, v.unsqueeze(2))
        out = part if out is None else out + part
    return out.reshape(b, lm.n_heads, t, lm.head_dim).transpose(1, 2).reshape(b, t, lm.q_size)


@dataclass
class _Layout:
    """Static buffers (and, once captured, the graph) of one batch layout."""

    key: tuple
    spans: list[tuple[int, int]]  # per group: [a, b) padded static rows
    prefixes: list[list[tuple[torch.Tensor, torch.Tensor]]]  # per group, per layer: the shared prefix K/V
    own_k: list[torch.Tensor]  # per layer [B, kv, budget + 1, d]
    own_v: list[torch.Tensor]
    row_k: list[list[torch.Tensor]]  # per group, per layer [rows_pad, kv, S_pad, d]
    row_v: list[list[torch.Tensor]]
    row_valid: list[torch.Tensor]  # per group [rows_pad, 1, 1, 1, S_pad] bool
    ctx_len: torch.Tensor  # [B] long: prefix + suffix tokens of each row
    tokens: torch.Tensor  # [B] long: this step's input token per row
    t: torch.Tensor  # [1] long: own position being written this step
    own_pos: torch.Tensor  # [budget + 1] long: 0..budget (own-token mask)
    logits: torch.Tensor | None = None  # [B, V]: the captured graph's output
    graph: Any = None  # torch.cuda.CUDAGraph once captured
    capture_ms: float = 0.0


@dataclass
class _StaticRows:
    """What ``GraphedLM.rows`` returns: the engine's RowBatch, on a static layout.

    ``ctx_len`` (real rows) and ``keep`` are what the engine reads; ``live`` maps the engine's current
    rows to static rows."""

    layout: _Layout
    live: list[int]
    live_idx: torch.Tensor
    ctx_len: torch.Tensor
    budget: int
    step_t: int = 1  # the tag token (own position 0) is already in the buffer
    extra: dict[str, Any] = field(default_factory=dict)

    def keep(self, idx: list[int]) -> None:
        """Keep only rows ``idx`` (ascending indices into the current rows), as ``RowBatch.keep``."""
        self.live = [self.live[i] for i in idx]
        self.live_idx = torch.tensor(self.live, dtype=torch.long, device=self.live_idx.device)


class GraphedLM:
    """``LeanLM`` with its decode step on static buffers, captured as CUDA graphs where it can be.

    ``max_positions``: the largest context position a decide may reach (the model's
    ``max_position_embeddings``); the RoPE table is built for it once. ``capture``: capture CUDA
    graphs (CUDA only); False runs the same static step eagerly. Counters: ``captures``, ``replays``,
    ``capture_ms`` (total), ``fallback`` (None, or why the plain lean step runs instead)."""

    def __init__(
        self, lm: Any, max_positions: int, *, capture: bool = True, max_graphs: int = MAX_GRAPHS
    ) -> None:
        self.lm = lm
        self.capture = capture
        self.max_graphs = max_graphs
        self.fallback: str | None = None
        self.captures = 0
        self.replays = 0
        self.capture_ms = 0.0
        self._layouts: OrderedDict[tuple, _Layout] = OrderedDict()
        if capture and lm.device.type != "cuda":
            self.fallback = (
                f"CUDA graphs need a CUDA device (this model is on {lm.device.type}): the lean step ran"
            )
        elif capture and not hasattr(torch.cuda, "CUDAGraph"):
            self.fallback = "this torch build has no torch.cuda.CUDAGraph: the lean step ran"
        self.max_positions = max_positions
        pos = torch.arange(max_positions, device=lm.device, dtype=torch.float32)
        freqs = torch.outer(pos, lm.inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)  # the same table as LeanLM._rope_tables, built once
        self._cos = (emb.cos() * lm.rope_scale).to(lm.dtype)
        self._sin = (emb.sin() * lm.rope_scale).to(lm.dtype)

    def __getattr__(self, name: str) -> Any:  # prefill, lm_head, device, dtype, ...: the lean model's
        return getattr(self.lm, name)

    def stats(self) -> dict[str, Any]:
        return {
            "captures": self.captures,
            "replays": self.replays,
            "capture_ms": round(self.capture_ms, 1),
            "layouts": len(self._layouts),
            "fallback": self.fallback,
        }

    # ------------------------------------------------------------------ the engine's two calls
    def rows(self, groups: list, budget: int):
        """Like ``LeanLM.rows``: all heads of all requests, room for ``budget`` tokens each."""
        if self.fallback is not None:
            return self.lm.rows(groups, budget)
        longest = max(int(g.ctx_len.max()) for g in groups) + budget + 1
        if longest > self.max_positions:  # beyond the RoPE table: this decide runs the lean step
            return self.lm.rows(groups, budget)
        layout = self._layout(groups, budget)
        live = self._fill(layout, groups)
        real_ctx = torch.cat([g.ctx_len.repeat_interleave(g.tag_k[0].shape[2]) for g in groups])
        return _StaticRows(
            layout=layout,
            live=live,
            ctx_len=real_ctx,
            budget=budget,
            live_idx=torch.tensor(live, dtype=torch.long, device=self.lm.device),
        )

    @torch.inference_mode()
    def step(self, rb, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per live row; returns next-token logits [live rows, V]."""
        if not isinstance(rb, _StaticRows):
            return self.lm.step(rb, tokens)
        lay = rb.layout
        if rb.step_t > rb.budget:
            raise RuntimeError(f"step {rb.step_t} beyond the budget of {rb.budget} tokens")
        lay.tokens.index_copy_(0, rb.live_idx, tokens)
        lay.t.fill_(rb.step_t)
        if self.capture and self.fallback is None and lay.graph is None:
            self._capture(lay)
        if lay.graph is not None:
            lay.graph.replay()
            self.replays += 1
            out = lay.logits
        else:
            out = self._forward(lay)
        rb.step_t += 1
        return out.index_select(0, rb.live_idx)

    # ------------------------------------------------------------------ layouts
    def _layout(self, groups: list, budget: int) -> _Layout:
        lm = self.lm
        shape = []
        for g in groups:
            kp = g.prefix[0][0][0] if g.prefix and g.prefix[0] else None
            rows = g.tag_k[0].shape[0] * g.tag_k[0].shape[2]
            s_pad = -(-g.suf_k[0].shape[2] // SUFFIX_BUCKET) * SUFFIX_BUCKET
            shape.append((kp.data_ptr() if kp is not None else 0, _pow2(rows), max(s_pad, SUFFIX_BUCKET)))
        key = (budget, tuple(shape))
        lay = self._layouts.get(key)
        if lay is not None:
            self._layouts.move_to_end(key)
            return lay
        while len(self._layouts) >= self.max_graphs:
            self._layouts.popitem(last=False)
        dev, dt, kv, d = lm.device, lm.dtype, lm.n_kv, lm.head_dim
        spans, a = [], 0
        for _, rows_pad, _ in shape:
            spans.append((a, a + rows_pad))
            a += rows_pad
        total = a
        n_layers = len(lm.layers)

        def zeros(*size):  # zeros, not empty: masked positions are multiplied by 0, and 0 * NaN is NaN
            return torch.zeros(*size, dtype=dt, device=dev)

        with torch.inference_mode():
            lay = _Layout(
                key=key,
                spans=spans,
                prefixes=[list(g.prefix) for g in groups],
                own_k=[zeros(total, kv, budget + 1, d) for _ in range(n_layers)],
                own_v=[zeros(total, kv, budget + 1, d) for _ in range(n_layers)],
                row_k=[[zeros(rp, kv, sp, d) for _ in range(n_layers)] for _, rp, sp in shape],
                row_v=[[zeros(rp, kv, sp, d) for _ in range(n_layers)] for _, rp, sp in shape],
                row_valid=[torch.zeros(rp, 1, 1, 1, sp, dtype=torch.bool, device=dev) for _, rp, sp in shape],
                ctx_len=torch.zeros(total, dtype=torch.long, device=dev),
                tokens=torch.zeros(total, dtype=torch.long, device=dev),
                t=torch.ones(1, dtype=torch.long, device=dev),
                own_pos=torch.arange(budget + 1, dtype=torch.long, device=dev),
            )
        self._layouts[key] = lay
        return lay

    @torch.inference_mode()
    def _fill(self, lay: _Layout, groups: list) -> list[int]:
        """Copy one decide's tags, suffixes and context lengths into the layout; returns the static
        row of each real row (rows ordered by group, request, head, as ``RowBatch``)."""
        live: list[int] = []
        for gi, g in enumerate(groups):
            a, _ = lay.spans[gi]
            m, n = g.tag_k[0].shape[0], g.tag_k[0].shape[2]
            rows, s = m * n, g.suf_k[0].shape[2]
            live.extend(range(a, a + rows))
            for li in range(len(self.lm.layers)):
                lay.own_k[li][a : a + rows, :, 0] = (
                    g.tag_k[li].permute(0, 2, 1, 3).reshape(rows, self.lm.n_kv, -1)
                )
                lay.own_v[li][a : a + rows, :, 0] = (
                    g.tag_v[li].permute(0, 2, 1, 3).reshape(rows, self.lm.n_kv, -1)
                )
                lay.row_k[gi][li][:rows, :, :s] = g.suf_k[li].repeat_interleave(n, dim=0)
                lay.row_v[gi][li][:rows, :, :s] = g.suf_v[li].repeat_interleave(n, dim=0)
            valid = lay.row_valid[gi]
            valid.zero_()
            valid[:rows, 0, 0, 0, :s] = g.suf_valid.repeat_interleave(n, dim=0)
            valid[rows:, 0, 0, 0, 0] = True  # padding rows see one key: no all-masked softmax anywhere
            lay.ctx_len[a : a + rows] = g.ctx_len.repeat_interleave(n)
        return live

    # ------------------------------------------------------------------ the step on static buffers
    def _forward(self, lay: _Layout) -> torch.Tensor:
        """One decode step over every static row (no host sync, no shape that depends on ``t``)."""
        lm = self.lm
        pos = lay.ctx_len + lay.t
        # index_select, not advanced indexing: a plain gather kernel, safe to capture
        cos, sin = self._cos.index_select(0, pos).unsqueeze(1), self._sin.index_select(0, pos).unsqueeze(1)
        own_mask = (lay.own_pos <= lay.t)[None, None, None, None, :]  # positions written so far
        x = F.embedding(lay.tokens, lm.embed).unsqueeze(1)  # [B, 1, H]
        for i, lw in enumerate(lm.layers):
            q, k, v = _qkv(lm, lw, lm._rms(x, lw.ln1), cos, sin)
            lay.own_k[i].index_copy_(2, lay.t, k)
            lay.own_v[i].index_copy_(2, lay.t, v)
            parts = []
            for gi, (a, b) in enumerate(lay.spans):
                segs = [(kp, vp, None) for kp, vp in lay.prefixes[gi][i]]
                segs.append((lay.row_k[gi][i], lay.row_v[gi][i], lay.row_valid[gi]))
                segs.append((lay.own_k[i][a:b], lay.own_v[i][a:b], own_mask))
                parts.append(_attend(lm, q[a:b], segs))
            att = parts[0] if len(parts) == 1 else torch.cat(parts)
            x = x + _linear(lw, "o", att)
            x = lm._mlp(lw, x)
        return lm.logits(x[:, 0])

    def _capture(self, lay: _Layout) -> None:
        """Capture ``_forward`` on ``lay``; on failure fall back to the lean step for good."""
        t0 = time.perf_counter()
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up off the capture stream (cuBLAS workspaces, allocator)
                for _ in range(2):
                    self._forward(lay)  # idempotent: writes this step's own K/V at t, as the replay will
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                lay.logits = self._forward(lay)
            lay.graph = graph
            self.captures += 1
        except Exception as exc:  # a capture that fails must not take the engine down
            lay.graph, lay.logits = None, None
            self.fallback = (
                f"CUDA graph capture failed ({type(exc).__name__}: {str(exc)[:200]}): the lean step ran"
            )
        finally:
            try:
                torch.cuda.synchronize()
            except Exception as exc:  # a broken capture can leave the context failing: keep the first reason
                self.fallback = (
                    self.fallback or f"CUDA error after capture ({type(exc).__name__}): the lean step ran"
                )
            lay.capture_ms = (time.perf_counter() - t0) * 1e3
            self.capture_ms += lay.capture_ms
