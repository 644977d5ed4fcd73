"""A lean forward pass for Qwen2 / Qwen3 / Llama / Mistral decoder weights, built for SimpleTool.

Why: a generic ``model(...)`` call costs milliseconds of Python and module overhead per step, which is
the whole budget of a small model at 16 Hz (FIELD-NOTES). This module reads the weights out of a
loaded transformers model once (fusing q/k/v and gate/up) and runs the decoder with plain tensor ops.

Attention is computed over *segments* that are never copied: the cached static prefix, this tick's
suffix, and each head's own tokens. So a decide costs the same whether the tool prefix holds 2 tools
or 64 (no per-tick copy of the prefix KV, no per-head copy of the shared context).

* ``prefill(ids, past, tags)``: run ``ids`` on top of the cached ``past`` and, in the same forward, one
  *tag* token per head, each attending to past + ids + itself only (a small tree mask). Returns the
  tags' next-token logits, so each head's first token costs no extra step.
* ``rows(...)`` + ``step(rows, tokens)``: greedy decode of many heads (rows) in one batch. Rows of one
  request share its context segments; rows of several requests are grouped by request.

Numerics follow the transformers implementations (RMSNorm in float32, rotate-half RoPE with the
model's own ``inv_freq`` and ``attention_scaling``, softmax in float32); tests compare token for token
with the transformers model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "llama", "mistral")

Segment = tuple[torch.Tensor, torch.Tensor]  # (K [kv, L, d], V [kv, L, d])
Context = list[list[Segment]]  # per layer: the segments a request's heads attend to


@dataclass
class _Layer:
    ln1: torch.Tensor
    ln2: torch.Tensor
    w_qkv: torch.Tensor
    b_qkv: torch.Tensor | None
    w_o: torch.Tensor
    w_gate_up: torch.Tensor
    w_down: torch.Tensor
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None


class LeanLM:
    """Weights of a decoder-only model, and the two forward passes SimpleTool needs."""

    def __init__(self, model) -> None:
        cfg = model.config
        if cfg.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type {cfg.model_type!r} is not supported by the lean decoder; "
                             f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        inner = model.model
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads or cfg.num_attention_heads
        self.group = self.n_heads // self.n_kv
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.scaling = self.head_dim ** -0.5
        self.embed = inner.embed_tokens.weight.detach()
        self.norm = inner.norm.weight.detach()
        self.lm_head = model.lm_head.weight.detach()
        self.dtype = self.embed.dtype
        self.device = self.embed.device
        rot = inner.rotary_emb
        self.inv_freq = rot.inv_freq.detach().float().to(self.device)
        self.rope_scale = float(getattr(rot, "attention_scaling", 1.0))
        self._cos = self._sin = torch.empty(0)
        self.layers: list[_Layer] = []
        with torch.no_grad():
            for layer in inner.layers:
                a, m = layer.self_attn, layer.mlp
                projs = (a.q_proj, a.k_proj, a.v_proj)
                b_qkv = None
                if any(p.bias is not None for p in projs):
                    b_qkv = torch.cat([p.bias if p.bias is not None else
                                       torch.zeros(p.out_features, dtype=self.dtype, device=self.device)
                                       for p in projs])
                self.layers.append(_Layer(
                    ln1=layer.input_layernorm.weight.detach(),
                    ln2=layer.post_attention_layernorm.weight.detach(),
                    w_qkv=torch.cat([p.weight for p in projs]).detach(),
                    b_qkv=b_qkv,
                    w_o=a.o_proj.weight.detach(),
                    w_gate_up=torch.cat([m.gate_proj.weight, m.up_proj.weight]).detach(),
                    w_down=m.down_proj.weight.detach(),
                    q_norm=a.q_norm.weight.detach() if hasattr(a, "q_norm") else None,
                    k_norm=a.k_norm.weight.detach() if hasattr(a, "k_norm") else None,
                ))
        self.q_size = self.n_heads * self.head_dim
        self.kv_size = self.n_kv * self.head_dim
        self.inter = self.layers[0].w_down.shape[1] if self.layers else 0

    # ------------------------------------------------------------------ pieces
    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return w * xf.to(x.dtype)

    def _rope_tables(self, n: int) -> None:
        if self._cos.shape[0] >= n:
            return
        size = max(n, 2 * self._cos.shape[0], 512)
        pos = torch.arange(size, device=self.device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self._cos = (emb.cos() * self.rope_scale).to(self.dtype)
        self._sin = (emb.sin() * self.rope_scale).to(self.dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rot * sin

    def _qkv(self, lw: _Layer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """h [B, T, H] -> q [B, kv, g, T, d], k/v [B, kv, T, d] with RoPE (cos/sin [B or 1, T, d])."""
        qkv = F.linear(h, lw.w_qkv, lw.b_qkv)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        b, t = h.shape[0], h.shape[1]
        q = q.view(b, t, self.n_heads, self.head_dim)
        k = k.view(b, t, self.n_kv, self.head_dim)
        v = v.view(b, t, self.n_kv, self.head_dim)
        if lw.q_norm is not None:
            q = self._rms(q, lw.q_norm)
            k = self._rms(k, lw.k_norm)
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # [B, T, 1, d]
        q = self._rotate(q, cos, sin).permute(0, 2, 1, 3)  # [B, heads, T, d]
        k = self._rotate(k, cos, sin).permute(0, 2, 1, 3)  # [B, kv, T, d]
        return q.reshape(b, self.n_kv, self.group, t, self.head_dim), k, v.permute(0, 2, 1, 3)

    def _attend(self, q: torch.Tensor, shared: list[Segment], own: Segment,
                own_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax attention of q [B, kv, g, T, d] over ``shared`` segments (K/V [kv, L, d], the same
        for every row, never copied) and ``own`` K/V [B, kv, L2, d] (masked by ``own_mask`` [T, L2]).
        Returns [B, T, heads*d]."""
        scores = [torch.matmul(q, k.unsqueeze(-3).transpose(-1, -2)) for k, _ in shared]
        s_own = torch.matmul(q, own[0].unsqueeze(2).transpose(-1, -2))
        if own_mask is not None:
            s_own = s_own.masked_fill(~own_mask, float("-inf"))
        scores.append(s_own)
        sizes = [s.shape[-1] for s in scores]
        probs = torch.softmax(torch.cat(scores, dim=-1).float() * self.scaling, dim=-1).to(q.dtype)
        parts = probs.split(sizes, dim=-1)
        out = torch.matmul(parts[-1], own[1].unsqueeze(2))
        for p, (_, v) in zip(parts[:-1], shared, strict=True):
            out = out + torch.matmul(p, v.unsqueeze(-3))
        b, _, _, t, _ = out.shape
        return out.reshape(b, self.n_heads, t, self.head_dim).transpose(1, 2).reshape(b, t, self.q_size)

    def _mlp(self, lw: _Layer, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(self._rms(x, lw.ln2), lw.w_gate_up).split(self.inter, dim=-1)
        return x + F.linear(F.silu(gate) * up, lw.w_down)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(self._rms(h, self.norm), self.lm_head)

    # ------------------------------------------------------------------ prefill
    @torch.inference_mode()
    def prefill(self, ids: list[int], past: Context | None = None, tags: list[int] = (),
                want_last: bool = False) -> tuple[Context, list[Segment], torch.Tensor | None]:
        """Run ``ids`` after ``past`` plus one tree-masked tag token per head.

        Returns (context = past segments + a segment for ``ids``, the tags' K/V per layer
        ([kv, n_tags, d] each), logits): logits are [n_tags, V] for the tags, or [1, V] for the last id
        when ``want_last`` and there are no tags.
        """
        p = sum(seg[0].shape[1] for seg in past[0]) if past else 0
        s, n = len(ids), len(tags)
        tokens = torch.tensor([*ids, *tags], dtype=torch.long, device=self.device)
        self._rope_tables(p + s + 1)
        pos = torch.cat([torch.arange(p, p + s, device=self.device),
                         torch.full((n,), p + s, device=self.device, dtype=torch.long)])
        cos, sin = self._cos[pos].unsqueeze(0), self._sin[pos].unsqueeze(0)
        # own mask [s+n, s+n]: the ids are causal; tag j sees all ids and itself (past is always visible)
        mask = torch.zeros(s + n, s + n, dtype=torch.bool, device=self.device)
        mask[:, :s] = torch.ones(s + n, s, dtype=torch.bool, device=self.device).tril()
        mask[s:, :s] = True
        mask[s:, s:] = torch.eye(n, dtype=torch.bool, device=self.device)
        x = F.embedding(tokens, self.embed).unsqueeze(0)  # [1, s+n, H]
        ctx: Context = []
        tag_kv: list[Segment] = []
        for i, lw in enumerate(self.layers):
            q, k, v = self._qkv(lw, self._rms(x, lw.ln1), cos, sin)
            shared = past[i] if past else []
            att = self._attend(q, shared, (k, v), mask)
            x = x + F.linear(att, lw.w_o)
            x = self._mlp(lw, x)
            ctx.append([*shared, (k[0, :, :s], v[0, :, :s])] if s else list(shared))
            tag_kv.append((k[0, :, s:], v[0, :, s:]))
        out = None
        if n:
            out = self.logits(x[0, s:])
        elif want_last and s:
            out = self.logits(x[0, s - 1 : s])
        return ctx, tag_kv, out

    # ------------------------------------------------------------------ batched decode
    def rows(self, contexts: list[Context], tag_kvs: list[list[Segment]], budget: int) -> RowBatch:
        """Own-token buffers for all heads of all requests, with room for ``budget`` tokens each."""
        return RowBatch(self, contexts, tag_kvs, budget)

    @torch.inference_mode()
    def step(self, rb: RowBatch, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per live row; returns next-token logits [rows, V]."""
        t = rb.t
        pos = rb.ctx_len + t
        self._rope_tables(int(pos.max()) + 1)
        cos, sin = self._cos[pos].unsqueeze(1), self._sin[pos].unsqueeze(1)  # [n, 1, d]
        x = F.embedding(tokens, self.embed).unsqueeze(1)  # [n, 1, H]
        for i, lw in enumerate(self.layers):
            q, k, v = self._qkv(lw, self._rms(x, lw.ln1), cos, sin)
            rb.k[i][:, :, t] = k[:, :, 0]
            rb.v[i][:, :, t] = v[:, :, 0]
            own_k, own_v = rb.k[i][:, :, : t + 1], rb.v[i][:, :, : t + 1]
            if len(rb.groups) == 1:
                att = self._attend(q, rb.contexts[rb.groups[0][0]][i], (own_k, own_v))
            else:
                att = torch.cat([self._attend(q[a:b], rb.contexts[item][i], (own_k[a:b], own_v[a:b]))
                                 for item, a, b in rb.groups])
            x = x + F.linear(att, lw.w_o)
            x = self._mlp(lw, x)
        rb.t += 1
        return self.logits(x[:, 0])


class RowBatch:
    """Per-row buffers of the heads' own tokens ``[rows, kv, budget + 1, d]`` (the tag at index 0).

    Rows are ordered by request; ``groups`` lists (request, first row, end row). ``keep(idx)`` drops
    finished rows (their buffers leave the batch)."""

    def __init__(self, lm: LeanLM, contexts: list[Context], tag_kvs: list[list[Segment]], budget: int) -> None:
        self.contexts = contexts
        counts = [tk[0][0].shape[1] for tk in tag_kvs]
        n = sum(counts)
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        for li in range(len(lm.layers)):
            kb = torch.empty(n, lm.n_kv, budget + 1, lm.head_dim, dtype=lm.dtype, device=lm.device)
            vb = torch.empty_like(kb)
            kb[:, :, 0] = torch.cat([tk[li][0].transpose(0, 1) for tk in tag_kvs])
            vb[:, :, 0] = torch.cat([tk[li][1].transpose(0, 1) for tk in tag_kvs])
            self.k.append(kb)
            self.v.append(vb)
        lens = [sum(seg[0].shape[1] for seg in ctx[0]) for ctx in contexts]
        self.row_item = [i for i, c in enumerate(counts) for _ in range(c)]
        self.ctx_len = torch.tensor([lens[i] for i in self.row_item], device=lm.device)
        self.groups = self._groups()
        self.t = 1  # the tag token (own position 0) is already in the buffer

    def _groups(self) -> list[tuple[int, int, int]]:
        groups: list[tuple[int, int, int]] = []
        for r, item in enumerate(self.row_item):
            if groups and groups[-1][0] == item:
                groups[-1] = (item, groups[-1][1], r + 1)
            else:
                groups.append((item, r, r + 1))
        return groups

    def keep(self, idx: list[int]) -> None:
        index = torch.tensor(idx, device=self.ctx_len.device)
        self.k = [b.index_select(0, index) for b in self.k]
        self.v = [b.index_select(0, index) for b in self.v]
        self.ctx_len = self.ctx_len.index_select(0, index)
        self.row_item = [self.row_item[i] for i in idx]
        self.groups = self._groups()
