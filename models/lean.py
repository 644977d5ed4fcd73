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

    def _attend(self, q: torch.Tensor, segments: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
                ) -> torch.Tensor:
        """Softmax attention of q [B, kv, g, T, d] over K/V segments that are never copied.

        A segment is (K, V, mask): K/V [kv, L, d] are shared by every row (the cached prefix);
        K/V [B, kv, L, d] belong to each row (a request's suffix, a head's own tokens); ``mask``
        (bool, True = visible) broadcasts to [B, kv, g, T, L], or is None. Returns [B, T, heads*d]."""
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
        probs = torch.softmax(torch.cat(scores, dim=-1).float() * self.scaling, dim=-1).to(q.dtype)
        out = None
        for p, (k, v, _) in zip(probs.split(sizes, dim=-1), segments, strict=True):
            if k.dim() == 3:
                p_kv = p.permute(1, 0, 2, 3, 4).reshape(kv, b * g * t, -1)
                part = torch.bmm(p_kv, v).view(kv, b, g, t, d).permute(1, 0, 2, 3, 4)
            else:
                part = torch.matmul(p, v.unsqueeze(2))
            out = part if out is None else out + part
        return out.reshape(b, self.n_heads, t, self.head_dim).transpose(1, 2).reshape(b, t, self.q_size)

    def _mlp(self, lw: _Layer, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(self._rms(x, lw.ln2), lw.w_gate_up).split(self.inter, dim=-1)
        return x + F.linear(F.silu(gate) * up, lw.w_down)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(self._rms(h, self.norm), self.lm_head)

    # ------------------------------------------------------------------ prefill
    @torch.inference_mode()
    def prefill_prefix(self, ids: list[int]) -> Context:
        """The static prefix's KV cache (one shared segment per layer)."""
        g = self.prefill_group([ids], None, [])
        return [[(g.suf_k[i][0], g.suf_v[i][0])] for i in range(len(self.layers))]

    @torch.inference_mode()
    def prefill_group(self, suffixes: list[list[int]], prefix: Context | None, tags: list[int]) -> GroupPrefill:
        """Prefill several requests that share one cached ``prefix``, in one forward.

        Each request's suffix (padded to the longest) is causal over prefix + itself; each of its tag
        tokens (one per head, the same for every request) sees prefix + suffix + itself only, at
        position ``P + len(suffix)``. Returns the suffixes' and tags' K/V and the tags' logits."""
        dev = self.device
        p = sum(seg[0].shape[1] for seg in prefix[0]) if prefix else 0
        m, n = len(suffixes), len(tags)
        lens = torch.tensor([len(x) for x in suffixes], device=dev)
        smax = int(lens.max())
        width = smax + n
        tokens = torch.zeros(m, width, dtype=torch.long, device=dev)
        for i, ids in enumerate(suffixes):
            tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.long, device=dev)
        if n:
            tokens[:, smax:] = torch.tensor(tags, dtype=torch.long, device=dev)
        cols = torch.arange(width, device=dev)
        pos = torch.where(cols < smax, p + cols, p + lens[:, None])  # [m, width]; tags sit at P + len
        self._rope_tables(p + width + 1)
        cos, sin = self._cos[pos], self._sin[pos]  # [m, width, d]
        # mask [m, width, width]: keys must be real suffix tokens (k < len) at or before the query,
        # or, for a tag, the tag itself.
        valid = cols[None, :] < lens[:, None]  # [m, width] real suffix keys
        causal = cols[None, :, None] >= cols[None, None, :]  # query >= key
        is_tag_q = (cols >= smax)[None, :, None]
        mask = valid[:, None, :] & (causal | is_tag_q)
        if n:
            mask = mask | (is_tag_q & (cols[None, :, None] == cols[None, None, :]))
        mask = mask[:, None, None]  # [m, 1, 1, width, width]
        x = F.embedding(tokens, self.embed)  # [m, width, H]
        suf_k, suf_v, tag_k, tag_v = [], [], [], []
        for i, lw in enumerate(self.layers):
            q, k, v = self._qkv(lw, self._rms(x, lw.ln1), cos, sin)
            shared = [(kp, vp, None) for kp, vp in prefix[i]] if prefix else []
            att = self._attend(q, [*shared, (k, v, mask)])
            x = x + F.linear(att, lw.w_o)
            x = self._mlp(lw, x)
            suf_k.append(k[:, :, :smax])
            suf_v.append(v[:, :, :smax])
            tag_k.append(k[:, :, smax:])
            tag_v.append(v[:, :, smax:])
        logits = self.logits(x[:, smax:]) if n else None
        return GroupPrefill(prefix=prefix or [[] for _ in self.layers], suf_k=suf_k, suf_v=suf_v,
                            suf_valid=valid[:, :smax], tag_k=tag_k, tag_v=tag_v, ctx_len=p + lens,
                            logits=logits)

    # ------------------------------------------------------------------ batched decode
    def rows(self, groups: list[GroupPrefill], budget: int) -> RowBatch:
        """Own-token buffers for all heads of all requests, with room for ``budget`` tokens each."""
        return RowBatch(self, groups, budget)

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
            parts = []
            for g, a, b in rb.spans():
                segs = [(kp, vp, None) for kp, vp in g.prefix[i]]
                segs.append((g.row_k[i], g.row_v[i], g.row_valid))
                segs.append((own_k[a:b], own_v[a:b], None))
                parts.append(self._attend(q[a:b], segs))
            att = parts[0] if len(parts) == 1 else torch.cat(parts)
            x = x + F.linear(att, lw.w_o)
            x = self._mlp(lw, x)
        rb.t += 1
        return self.logits(x[:, 0])


@dataclass
class GroupPrefill:
    """Requests that share one cached prefix, after ``prefill_group``.

    Per layer: ``suf_k``/``suf_v`` [m, kv, Smax, d] (``suf_valid`` [m, Smax] marks real tokens),
    ``tag_k``/``tag_v`` [m, kv, n, d]; ``ctx_len`` [m] = prefix + suffix tokens; ``logits`` [m, n, V]."""

    prefix: Context
    suf_k: list[torch.Tensor]
    suf_v: list[torch.Tensor]
    suf_valid: torch.Tensor
    tag_k: list[torch.Tensor]
    tag_v: list[torch.Tensor]
    ctx_len: torch.Tensor
    logits: torch.Tensor | None
    # set by RowBatch: the suffix of each live row (copied from its request; suffixes are short)
    row_k: list[torch.Tensor] | None = None
    row_v: list[torch.Tensor] | None = None
    row_valid: torch.Tensor | None = None
    rows: int = 0


class RowBatch:
    """The heads being decoded: rows ordered by group (shared prefix), then request, then head.

    Own tokens live in ``k``/``v`` [rows, kv, budget + 1, d] (the tag at index 0); each group keeps
    its rows' suffixes (``row_k``/``row_v``, with a validity mask). ``keep(idx)`` drops finished rows."""

    def __init__(self, lm: LeanLM, groups: list[GroupPrefill], budget: int) -> None:
        self.groups = groups
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        for li in range(len(lm.layers)):
            kb = torch.empty(sum(g.tag_k[0].shape[0] * g.tag_k[0].shape[2] for g in groups), lm.n_kv,
                             budget + 1, lm.head_dim, dtype=lm.dtype, device=lm.device)
            vb = torch.empty_like(kb)
            kb[:, :, 0] = torch.cat([g.tag_k[li].permute(0, 2, 1, 3).reshape(-1, lm.n_kv, lm.head_dim)
                                     for g in groups])
            vb[:, :, 0] = torch.cat([g.tag_v[li].permute(0, 2, 1, 3).reshape(-1, lm.n_kv, lm.head_dim)
                                     for g in groups])
            self.k.append(kb)
            self.v.append(vb)
        for g in groups:
            n = g.tag_k[0].shape[2]
            g.row_k = [sk.repeat_interleave(n, dim=0) for sk in g.suf_k]
            g.row_v = [sv.repeat_interleave(n, dim=0) for sv in g.suf_v]
            g.row_valid = g.suf_valid.repeat_interleave(n, dim=0)[:, None, None, None, :]
            g.rows = g.row_valid.shape[0]
        self.ctx_len = torch.cat([g.ctx_len.repeat_interleave(g.tag_k[0].shape[2]) for g in groups])
        self.t = 1  # the tag token (own position 0) is already in the buffer

    def spans(self) -> list[tuple[GroupPrefill, int, int]]:
        out, a = [], 0
        for g in self.groups:
            if g.rows:
                out.append((g, a, a + g.rows))
                a += g.rows
        return out

    def keep(self, idx: list[int]) -> None:
        """Keep only rows ``idx`` (ascending row indices of the current batch)."""
        index = torch.tensor(idx, device=self.ctx_len.device)
        self.k = [b.index_select(0, index) for b in self.k]
        self.v = [b.index_select(0, index) for b in self.v]
        self.ctx_len = self.ctx_len.index_select(0, index)
        for g, a, b in self.spans():
            local = torch.tensor([r - a for r in idx if a <= r < b], dtype=torch.long, device=index.device)
            g.row_k = [x.index_select(0, local) for x in g.row_k]
            g.row_v = [x.index_select(0, local) for x in g.row_v]
            g.row_valid = g.row_valid.index_select(0, local)
            g.rows = len(local)
