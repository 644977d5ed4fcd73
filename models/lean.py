"""A lean forward pass for Qwen2 / Qwen3 / Llama / Mistral decoder weights, built for SimpleTool.

Why: a generic ``model(...)`` call costs milliseconds of Python and module overhead per step, which is
the whole budget of a small model at 16 Hz (FIELD-NOTES). This module reads the weights out of a
loaded transformers model once (fusing q/k/v and gate/up) and runs the decoder with plain tensor ops:

* ``prefill(ids, past, tags)``: run ``ids`` on top of a cached ``past`` (the static prefix) and, in the
  same forward, one *tag* token per head, each attending to past + ids + itself only (a small tree
  mask). Returns the tags' next-token logits, so each head's first token costs no extra step.
* ``RowBatch`` + ``step(rows, tokens)``: greedy decode of many heads (rows) in one batch. Each row has
  the shared context of its request (copied once per decide into the row buffer) and its own
  generated tokens; rows of different requests (different context lengths) are masked.

Numerics follow the transformers implementations (RMSNorm in float32, rotate-half RoPE with the
model's own ``inv_freq`` and ``attention_scaling``, SDPA with GQA); tests compare token for token
with the transformers model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "llama", "mistral")

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (K [kv, T, d], V [kv, T, d])


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
                biases = [p.bias for p in (a.q_proj, a.k_proj, a.v_proj)]
                b_qkv = None
                if any(b is not None for b in biases):
                    b_qkv = torch.cat([b if b is not None else torch.zeros(p.out_features, dtype=self.dtype,
                                                                            device=self.device)
                                       for b, p in zip(biases, (a.q_proj, a.k_proj, a.v_proj), strict=True)])
                self.layers.append(_Layer(
                    ln1=layer.input_layernorm.weight.detach(),
                    ln2=layer.post_attention_layernorm.weight.detach(),
                    w_qkv=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach(),
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
        """h [..., T, H] -> q [..., heads, T, d], k/v [..., kv, T, d] with RoPE applied."""
        qkv = F.linear(h, lw.w_qkv, lw.b_qkv)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        lead = h.shape[:-1]
        q = q.view(*lead, self.n_heads, self.head_dim)
        k = k.view(*lead, self.n_kv, self.head_dim)
        v = v.view(*lead, self.n_kv, self.head_dim)
        if lw.q_norm is not None:
            q = self._rms(q, lw.q_norm)
            k = self._rms(k, lw.k_norm)
        q, k, v = q.transpose(-3, -2), k.transpose(-3, -2), v.transpose(-3, -2)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin), v

    def _mlp(self, lw: _Layer, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(self._rms(x, lw.ln2), lw.w_gate_up).split(self.inter, dim=-1)
        return x + F.linear(F.silu(gate) * up, lw.w_down)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(self._rms(h, self.norm), self.lm_head)

    # ------------------------------------------------------------------ prefill
    @torch.inference_mode()
    def prefill(self, ids: list[int], past: KV | None = None, tags: list[int] = (),
                want_last: bool = False) -> tuple[KV, KV, torch.Tensor | None]:
        """Run ``ids`` after ``past`` plus one tree-masked tag token per head.

        Returns (context KV = past + ids, tag KV [kv, n_tags, d] per layer, logits): logits are
        [n_tags, V] for the tags, or [1, V] for the last id when ``want_last`` and there are no tags.
        """
        p = past[0][0].shape[1] if past else 0
        s, n = len(ids), len(tags)
        tokens = torch.tensor(list(ids) + list(tags), dtype=torch.long, device=self.device)
        self._rope_tables(p + s + 1)
        pos = torch.cat([torch.arange(p, p + s, device=self.device),
                         torch.full((n,), p + s, device=self.device, dtype=torch.long)])
        cos, sin = self._cos[pos], self._sin[pos]
        # mask [s+n, p+s+n]: suffix is causal over past+suffix; tag j sees past+suffix+itself.
        total = p + s + n
        mask = torch.zeros(s + n, total, dtype=torch.bool, device=self.device)
        if s:
            mask[:s, : p + s] = torch.ones(s, p + s, dtype=torch.bool, device=self.device).tril(p)
        if n:
            mask[s:, : p + s] = True
            mask[s:, p + s:] = torch.eye(n, dtype=torch.bool, device=self.device)
        x = F.embedding(tokens, self.embed)
        ctx: KV = []
        tag_kv: KV = []
        for i, lw in enumerate(self.layers):
            h = self._rms(x, lw.ln1)
            q, k, v = self._qkv(lw, h, cos, sin)  # q [heads, s+n, d], k/v [kv, s+n, d]
            if past:
                k_all = torch.cat([past[i][0], k], dim=1)
                v_all = torch.cat([past[i][1], v], dim=1)
            else:
                k_all, v_all = k, v
            att = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, scale=self.scaling,
                                                 enable_gqa=self.n_kv != self.n_heads)
            x = x + F.linear(att.transpose(0, 1).reshape(s + n, self.q_size), lw.w_o)
            x = self._mlp(lw, x)
            ctx.append((k_all[:, : p + s], v_all[:, : p + s]))
            tag_kv.append((k[:, s:], v[:, s:]))
        out = None
        if n:
            out = self.logits(x[s:])
        elif want_last and s:
            out = self.logits(x[s - 1 : s])
        return ctx, tag_kv, out

    # ------------------------------------------------------------------ batched decode
    def rows(self, contexts: list[KV], tag_kvs: list[KV], budget: int) -> RowBatch:
        """Row buffers for all heads of all requests: context copied once, room for ``budget`` tokens."""
        return RowBatch(self, contexts, tag_kvs, budget)

    @torch.inference_mode()
    def step(self, rb: RowBatch, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per live row; returns next-token logits [rows, V]."""
        n = tokens.shape[0]
        col = rb.lmax + rb.t
        pos = rb.ctx_len + rb.t
        self._rope_tables(int(pos.max()) + 1)
        cos, sin = self._cos[pos].unsqueeze(1), self._sin[pos].unsqueeze(1)  # [n, 1, d]
        x = F.embedding(tokens, self.embed).unsqueeze(1)  # [n, 1, H]
        mask = rb.mask[:, None, None, : col + 1] if rb.mask is not None else None
        if mask is not None:
            rb.mask[:, col] = True
        for i, lw in enumerate(self.layers):
            h = self._rms(x, lw.ln1)
            q, k, v = self._qkv(lw, h, cos.unsqueeze(1), sin.unsqueeze(1))  # q [n, heads, 1, d]
            kb, vb = rb.k[i], rb.v[i]
            kb[:, :, col] = k[:, :, 0]
            vb[:, :, col] = v[:, :, 0]
            att = F.scaled_dot_product_attention(q, kb[:, :, : col + 1], vb[:, :, : col + 1], attn_mask=mask,
                                                 scale=self.scaling, enable_gqa=self.n_kv != self.n_heads)
            x = x + F.linear(att.transpose(1, 2).reshape(n, 1, self.q_size), lw.w_o)
            x = self._mlp(lw, x)
        rb.t += 1
        return self.logits(x[:, 0])


class RowBatch:
    """Per-row KV buffers ``[rows, kv, lmax + budget, d]``: context at ``[0:len)``, own tokens from
    ``lmax`` on. ``keep(idx)`` drops finished rows (their buffers leave the batch)."""

    def __init__(self, lm: LeanLM, contexts: list[KV], tag_kvs: list[KV], budget: int) -> None:
        lens = [c[0][0].shape[1] for c in contexts]
        counts = [t[0][0].shape[1] for t in tag_kvs]
        self.lmax = max(lens)
        n = sum(counts)
        width = self.lmax + budget + 1
        dev, dt = lm.device, lm.dtype
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        uniform = len(set(lens)) == 1
        for li in range(len(lm.layers)):
            kb = torch.zeros(n, lm.n_kv, width, lm.head_dim, dtype=dt, device=dev)
            vb = torch.zeros_like(kb)
            r = 0
            for ctx, tag, ln, c in zip(contexts, tag_kvs, lens, counts, strict=True):
                kb[r : r + c, :, :ln] = ctx[li][0]
                vb[r : r + c, :, :ln] = ctx[li][1]
                kb[r : r + c, :, self.lmax] = tag[li][0].transpose(0, 1)
                vb[r : r + c, :, self.lmax] = tag[li][1].transpose(0, 1)
                r += c
            self.k.append(kb)
            self.v.append(vb)
        self.ctx_len = torch.tensor([ln for ln, c in zip(lens, counts, strict=True) for _ in range(c)],
                                    device=dev)
        self.mask: torch.Tensor | None = None
        if not uniform:
            self.mask = torch.zeros(n, width, dtype=torch.bool, device=dev)
            for r, ln in enumerate(self.ctx_len.tolist()):
                self.mask[r, :ln] = True
            self.mask[:, self.lmax] = True
        self.t = 1  # the tag token (own position 0) is already in the buffer

    def keep(self, idx: torch.Tensor) -> None:
        self.k = [b.index_select(0, idx) for b in self.k]
        self.v = [b.index_select(0, idx) for b in self.v]
        self.ctx_len = self.ctx_len.index_select(0, idx)
        if self.mask is not None:
            self.mask = self.mask.index_select(0, idx)
