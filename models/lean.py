"""A lean forward pass for Qwen2 / Qwen3 / Llama / Mistral decoder weights, built for SimpleTool.

Why: a generic ``model(...)`` call costs milliseconds of Python and module overhead per step, which is
the whole budget of a small model at 16 Hz (FIELD-NOTES). This module reads the weights out of a
loaded transformers model once (fusing q/k/v and gate/up) and runs the decoder with plain tensor ops.

Attention is computed over *segments* that are never copied: the cached static prefix, this tick's
suffix, and each head's own tokens. So a decide costs the same whether the tool prefix holds 2 tools
or 64 (no per-tick copy of the prefix KV, no per-head copy of the shared context).

* ``prefill(ids, past, tags)``: run ``ids`` on top of the cached ``past`` and, in the same forward, one
  *tag* token per head, each attending to past + ids + itself only (a small tree mask). Returns the
  tags' next-token logits, so each head's first token costs no extra step. A request may bring the
  K/V of its turn's first tokens from an earlier decide (``Reused``; models.turn_cache): only the
  rest of its turn is computed.
* ``rows(...)`` + ``step(rows, tokens)``: greedy decode of many heads (rows) in one batch. Rows of one
  request share its context segments; rows of several requests are grouped by request.

Numerics follow the transformers implementations (RMSNorm in float32, rotate-half RoPE with the
model's own ``inv_freq`` and ``attention_scaling``, softmax in float32); tests compare token for token
with the transformers model.

Weight formats (``LeanLM(model, int8=...)``): the model's own dtype (float32, or bfloat16 weights and
activations), or int8: every projection (and the LM head) as a prepacked per-channel int8 weight
applied with dynamic activation quantization (``torch.ops.quantized.linear_dynamic``, fbgemm; VNNI
where the CPU has it), activations and KV cache in float32. Every matmul of a layer goes through one
``Linear`` callable, so the format is chosen once, at load.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "llama", "mistral")

Segment = tuple[torch.Tensor, torch.Tensor]  # (K [kv, L, d], V [kv, L, d])
Context = list[list[Segment]]  # per layer: the segments a request's heads attend to
Linear = Callable[[torch.Tensor], torch.Tensor]  # x [..., in] -> x W^T (+ b) [..., out]


def dense(w: torch.Tensor, b: torch.Tensor | None = None) -> Linear:
    """A linear layer in the weight's own dtype."""
    return lambda x: F.linear(x, w, b)


def int8_dynamic(w: torch.Tensor, b: torch.Tensor | None = None) -> Linear:
    """A linear layer with a prepacked int8 weight (symmetric, one scale per output channel) and
    activations quantized per call (per tensor, uint8 with full range: ``reduce_range=False`` is
    exact with VNNI's 32-bit accumulation). Input and output float32."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # torch 2.13 marks quantized tensor creation deprecated; fbgemm stays
        warnings.simplefilter("ignore", UserWarning)
        qw = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
    packed = torch.ops.quantized.linear_prepack(qw, None if b is None else b.detach().float())
    dyn = torch.ops.quantized.linear_dynamic
    return lambda x: dyn(x, packed, False)


@dataclass
class _Layer:
    ln1: torch.Tensor
    ln2: torch.Tensor
    qkv: Linear
    o: Linear
    gate_up: Linear
    down: Linear
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None


class LeanLM:
    """Weights of a decoder-only model, and the two forward passes SimpleTool needs."""

    def __init__(self, model, *, int8: bool = False) -> None:
        """``int8``: projections and LM head as dynamic-quantized int8 (CPU, float32 model only)."""
        cfg = model.config
        if cfg.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model_type {cfg.model_type!r} is not supported by the lean decoder; "
                f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        inner = model.model
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads or cfg.num_attention_heads
        self.group = self.n_heads // self.n_kv
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.scaling = self.head_dim**-0.5
        self.embed = inner.embed_tokens.weight.detach()
        self.norm = inner.norm.weight.detach()
        self.dtype = self.embed.dtype
        self.device = self.embed.device
        if int8 and (self.dtype != torch.float32 or self.device.type != "cpu"):
            raise ValueError("int8 weights need a float32 model on the CPU")
        self.int8 = int8
        lin = int8_dynamic if int8 else dense
        self.vocab = model.lm_head.weight.shape[0]
        self.lm_head = lin(model.lm_head.weight.detach())
        rot = inner.rotary_emb
        self.inv_freq = rot.inv_freq.detach().float().to(self.device)
        self.rope_scale = float(getattr(rot, "attention_scaling", 1.0))
        self._cos = self._sin = self._sin_signed = torch.empty(0)
        # float32 activations: torch's fused RMSNorm (one op, the same float32 math); bf16 keeps the
        # transformers rounding (normalise in float32, round, then scale in bf16) for token equality
        self._fused_rms = self.dtype == torch.float32
        self.layers: list[_Layer] = []
        with torch.no_grad():
            for layer in inner.layers:
                a, m = layer.self_attn, layer.mlp
                projs = (a.q_proj, a.k_proj, a.v_proj)
                b_qkv = None
                if any(p.bias is not None for p in projs):
                    b_qkv = torch.cat(
                        [
                            p.bias
                            if p.bias is not None
                            else torch.zeros(p.out_features, dtype=self.dtype, device=self.device)
                            for p in projs
                        ]
                    )
                self.layers.append(
                    _Layer(
                        ln1=layer.input_layernorm.weight.detach(),
                        ln2=layer.post_attention_layernorm.weight.detach(),
                        qkv=lin(torch.cat([p.weight for p in projs]).detach(), b_qkv),
                        o=lin(a.o_proj.weight.detach()),
                        gate_up=lin(torch.cat([m.gate_proj.weight, m.up_proj.weight]).detach()),
                        down=lin(m.down_proj.weight.detach()),
                        q_norm=a.q_norm.weight.detach() if hasattr(a, "q_norm") else None,
                        k_norm=a.k_norm.weight.detach() if hasattr(a, "k_norm") else None,
                    )
                )
        self.q_size = self.n_heads * self.head_dim
        self.kv_size = self.n_kv * self.head_dim
        self.inter = cfg.intermediate_size

    # ------------------------------------------------------------------ pieces
    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self._fused_rms:
            return F.rms_norm(x, (x.shape[-1],), w, self.eps)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return w * xf.to(x.dtype)

    def _additive(self, visible: torch.Tensor) -> torch.Tensor:
        """A bool mask (True = visible) as 0 / -inf in the activations' dtype."""
        out = torch.zeros(visible.shape, dtype=self.dtype, device=visible.device)
        return out.masked_fill_(~visible, float("-inf"))

    def _rope_tables(self, n: int) -> None:
        if self._cos.shape[0] >= n:
            return
        size = max(n, 2 * self._cos.shape[0], 512)
        pos = torch.arange(size, device=self.device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self._cos = (emb.cos() * self.rope_scale).to(self.dtype)
        self._sin = (emb.sin() * self.rope_scale).to(self.dtype)
        half = self._sin.shape[-1] // 2  # rotate_half(x) * sin == roll(x, half) * [-sin_lo, sin_hi], exactly
        self._sin_signed = torch.cat([-self._sin[:, :half], self._sin[:, half:]], dim=-1)

    def _qkv_fast(self, lw: _Layer, h: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor):
        """h [B, T, H] -> q [B, T, heads, d], k/v [B, T, kv, d] with RoPE applied to q and k in one
        pass where there is no q/k norm (cos/sin_signed [B or 1, T, 1, d]; see ``_rope_tables``)."""
        qkv = lw.qkv(h)
        b, t = h.shape[0], h.shape[1]
        nq, d, half = self.n_heads, self.head_dim, self.head_dim // 2
        v = qkv[..., self.q_size + self.kv_size :].view(b, t, self.n_kv, d)
        if lw.q_norm is None:
            qk = qkv[..., : self.q_size + self.kv_size].view(b, t, nq + self.n_kv, d)
            qk = torch.addcmul(qk * cos, qk.roll(half, -1), sin_signed)
            return qk[:, :, :nq], qk[:, :, nq:], v
        q = self._rms(qkv[..., : self.q_size].view(b, t, nq, d), lw.q_norm)
        k = self._rms(qkv[..., self.q_size : self.q_size + self.kv_size].view(b, t, self.n_kv, d), lw.k_norm)
        q = torch.addcmul(q * cos, q.roll(half, -1), sin_signed)
        k = torch.addcmul(k * cos, k.roll(half, -1), sin_signed)
        return q, k, v

    def _mlp(self, lw: _Layer, x: torch.Tensor) -> torch.Tensor:
        gate, up = lw.gate_up(self._rms(x, lw.ln2)).split(self.inter, dim=-1)
        return x + lw.down(F.silu(gate) * up)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self._rms(h, self.norm))

    # ------------------------------------------------------------------ prefill
    @torch.inference_mode()
    def prefill_prefix(self, ids: list[int]) -> Context:
        """The static prefix's KV cache (one shared segment per layer)."""
        g = self.prefill_group([ids], None, [])
        return [[(g.suf_k[i][0].contiguous(), g.suf_v[i][0].contiguous())] for i in range(len(self.layers))]

    @torch.inference_mode()
    def prefill_group(
        self,
        suffixes: list[list[int]],
        prefix: Context | None,
        tags: list[int],
        reused: list[Reused | None] | None = None,
    ) -> GroupPrefill:
        """Prefill several requests that share one cached ``prefix``, in one forward.

        Each request's suffix (padded to the longest) is causal over prefix + itself; each of its tag
        tokens (one per head, the same for every request) sees prefix + suffix + itself only, at
        position ``P + len(suffix)``. Returns the suffixes' and tags' K/V and the tags' logits.

        ``reused`` (per request, or None): K/V already computed for the first ``R_j`` tokens of request
        j's turn on top of this same prefix (``models.turn_cache``); then ``suffixes[j]`` holds only the
        turn's remaining tokens (at least one), placed at ``P + R_j + col``, and every query of the
        request also sees those ``R_j`` keys. Exact by causality: the K/V of the first ``R_j`` tokens
        depend only on them and the prefix. The returned ``suf_k``/``suf_v`` then hold
        ``[reused (padded to the longest) | new]`` per request, ``suf_valid`` marks both parts, and
        ``ctx_len`` counts both, so the decode reads the request as if it had been prefilled whole.

        Attention is one ``scaled_dot_product_attention`` per layer over [prefix | reused | window]
        keys: the query heads of a KV group are folded into the query axis ([m, kv, g*W, d]), so K/V
        are never repeated per query head; the prefix is copied once per layer (its attention reads it
        anyway)."""
        dev = self.device
        pk0 = prefix[0][0][0] if prefix and prefix[0] else None
        p = pk0.shape[1] if pk0 is not None else 0
        m, n, g = len(suffixes), len(tags), self.group
        lens = torch.tensor([len(x) for x in suffixes], device=dev)
        r_list = [r.tokens if r is not None else 0 for r in reused] if reused else [0] * m
        rmax = max(r_list)
        r_lens = torch.tensor(r_list, device=dev)
        smax = int(lens.max())
        width = smax + n
        tokens = torch.zeros(m, width, dtype=torch.long, device=dev)
        for i, ids in enumerate(suffixes):
            tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.long, device=dev)
        if n:
            tokens[:, smax:] = torch.tensor(tags, dtype=torch.long, device=dev)
        cols = torch.arange(width, device=dev)
        start = (p + r_lens)[:, None]  # [m, 1]: where each request's new tokens begin
        pos = torch.where(cols < smax, start + cols, start + lens[:, None])  # tags sit at P + R + len
        self._rope_tables(p + rmax + width + 1)  # positions reach P + R + width
        cos, sin_s = self._cos[pos].unsqueeze(2), self._sin_signed[pos].unsqueeze(2)  # [m, width, 1, d]
        # mask [m, width, width]: keys must be real suffix tokens (k < len) at or before the query,
        # or, for a tag, the tag itself.
        valid = cols[None, :] < lens[:, None]  # [m, width] real suffix keys
        causal = cols[None, :, None] >= cols[None, None, :]  # query >= key
        is_tag_q = (cols >= smax)[None, :, None]
        mask = valid[:, None, :] & (causal | is_tag_q)
        if n:
            mask = mask | (is_tag_q & (cols[None, :, None] == cols[None, None, :]))
        r_valid = torch.arange(rmax, device=dev)[None, :] < r_lens[:, None]  # [m, rmax] real reused keys
        if rmax:  # every query of a request (its new tokens and its tags) sees all its reused tokens
            mask = torch.cat([r_valid[:, None, :].expand(m, width, rmax), mask], dim=-1)
        if p:
            mask = torch.cat([torch.ones(m, width, p, dtype=torch.bool, device=dev), mask], dim=-1)
        # additive mask (0 / -inf) in the activations' dtype: SDPA would convert a bool mask per layer
        mask = self._additive(mask)[:, None, None]  # [m, 1, 1, width, P + width]
        keys = mask.shape[-1]
        full = mask.expand(m, 1, g, width, keys).reshape(
            m, 1, g * width, keys
        )  # query row = head_in_group*W + w
        # after the last layer only the tags' hidden states are read (their logits): its queries,
        # o_proj and MLP run for the tags alone (the prefix prefill, with no tags, skips them)
        tags_only = mask[:, :, :, smax:].expand(m, 1, g, n, keys).reshape(m, 1, g * n, keys)
        x = F.embedding(tokens, self.embed)  # [m, width, H]
        suf_k, suf_v, tag_k, tag_v = [], [], [], []
        kv, d = self.n_kv, self.head_dim
        last = len(self.layers) - 1
        for i, lw in enumerate(self.layers):
            q, k, v = self._qkv_fast(lw, self._rms(x, lw.ln1), cos, sin_s)
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # [m, kv, W, d]
            if rmax:  # [reused (zero-padded, masked) | window] per request
                rk, rv = self._reused_layer(reused, i, m, rmax)
                k, v = torch.cat([rk, k], dim=2), torch.cat([rv, v], dim=2)
            suf_k.append(k[:, :, : rmax + smax])
            suf_v.append(v[:, :, : rmax + smax])
            tag_k.append(k[:, :, rmax + smax :])
            tag_v.append(v[:, :, rmax + smax :])
            if i == last:
                if not n:
                    break
                q, x, rows, att_mask = q[:, smax:], x[:, smax:], n, tags_only
            else:
                rows, att_mask = width, full
            if p:
                kp, vp = prefix[i][0]
                k = torch.cat([kp.expand(m, -1, -1, -1), k], dim=2)
                v = torch.cat([vp.expand(m, -1, -1, -1), v], dim=2)
            qf = q.reshape(m, rows, kv, g, d).permute(0, 2, 3, 1, 4).reshape(m, kv, g * rows, d)
            att = F.scaled_dot_product_attention(qf, k, v, attn_mask=att_mask, scale=self.scaling)
            att = att.view(m, kv, g, rows, d).permute(0, 3, 1, 2, 4).reshape(m, rows, self.q_size)
            x = x + lw.o(att)
            x = self._mlp(lw, x)
        logits = self.logits(x) if n else None  # x holds the tags only after the last layer
        return GroupPrefill(
            prefix=prefix or [[] for _ in self.layers],
            suf_k=suf_k,
            suf_v=suf_v,
            suf_valid=torch.cat([r_valid, valid[:, :smax]], dim=1),
            tag_k=tag_k,
            tag_v=tag_v,
            ctx_len=p + r_lens + lens,
            logits=logits,
        )

    def _reused_layer(
        self, reused: list[Reused | None], layer: int, m: int, rmax: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s reused K/V of ``m`` requests as [m, kv, rmax, d] (zeros past each R_j).
        One request: a view of its entry, no copy."""
        if m == 1:
            r = reused[0]
            return r.k[layer][None, :, :rmax], r.v[layer][None, :, :rmax]
        kv, d = self.n_kv, self.head_dim
        rk = torch.zeros(m, kv, rmax, d, dtype=self.dtype, device=self.device)
        rv = torch.zeros(m, kv, rmax, d, dtype=self.dtype, device=self.device)
        for j, r in enumerate(reused):
            if r is not None and r.tokens:
                rk[j, :, : r.tokens] = r.k[layer][:, : r.tokens]
                rv[j, :, : r.tokens] = r.v[layer][:, : r.tokens]
        return rk, rv

    # ------------------------------------------------------------------ batched decode
    def rows(self, groups: list[GroupPrefill], budget: int) -> RowBatch:
        """Own-token buffers for all heads of all requests, with room for ``budget`` tokens each."""
        return RowBatch(self, groups, budget)

    @torch.inference_mode()
    def step(self, rb: RowBatch, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per live row; returns next-token logits [rows, V].

        Per layer and prefix group: this token's K/V go to each row's own slot ``t`` of the group's
        key buffer, then one ``scaled_dot_product_attention`` of the group's rows (folded into the
        query axis) over the buffer's first ``ctx + (t+1)*R`` keys, each row masked to its context."""
        t = rb.t
        pos = rb.ctx_len + t
        self._rope_tables(int(pos.max()) + 1)
        cos, sin_s = self._cos[pos][:, None, None], self._sin_signed[pos][:, None, None]  # [n, 1, 1, d]
        spans = rb.spans()
        masks = rb.masks_for_step()  # per span: [1, 1, g*rows, keys] (built once per step, not per layer)
        x = F.embedding(tokens, self.embed).unsqueeze(1)  # [n, 1, H]
        kv, d, g = self.n_kv, self.head_dim, self.group
        for i, lw in enumerate(self.layers):
            q, k, v = self._qkv_fast(lw, self._rms(x, lw.ln1), cos, sin_s)  # q [n, 1, heads, d]
            parts = []
            for (gb, a, b, slots), mask in zip(spans, masks, strict=True):
                kb, vb = gb.k[i], gb.v[i]
                kb[:, slots] = k[a:b, 0].transpose(0, 1)  # [kv, rows, d] into their own slots
                vb[:, slots] = v[a:b, 0].transpose(0, 1)
                nb, keys = b - a, mask.shape[-1]
                qf = q[a:b, 0].reshape(nb, kv, g, d).permute(1, 2, 0, 3).reshape(1, kv, g * nb, d)
                att = F.scaled_dot_product_attention(
                    qf, kb[None, :, :keys], vb[None, :, :keys], attn_mask=mask, scale=self.scaling
                )
                parts.append(att.view(kv, g, nb, d).permute(2, 0, 1, 3).reshape(nb, 1, self.q_size))
            att = parts[0] if len(parts) == 1 else torch.cat(parts)
            x = x + lw.o(att)
            x = self._mlp(lw, x)
        rb.t += 1
        return self.logits(x[:, 0])


@dataclass
class Reused:
    """K/V of a turn's first ``tokens`` tokens, computed earlier on top of the same prefix: per layer
    ``k``/``v`` [kv, >= tokens, d] (only the first ``tokens`` positions are read)."""

    tokens: int
    k: list[torch.Tensor]
    v: list[torch.Tensor]


@dataclass
class GroupPrefill:
    """Requests that share one cached prefix, after ``prefill_group``.

    Per layer: ``suf_k``/``suf_v`` [m, kv, Smax, d] (``suf_valid`` [m, Smax] marks real tokens; with
    reused turn K/V, Smax = longest reused + longest new part), ``tag_k``/``tag_v`` [m, kv, n, d];
    ``ctx_len`` [m] = prefix + suffix tokens (reused included); ``logits`` [m, n, V]."""

    prefix: Context
    suf_k: list[torch.Tensor]
    suf_v: list[torch.Tensor]
    suf_valid: torch.Tensor
    tag_k: list[torch.Tensor]
    tag_v: list[torch.Tensor]
    ctx_len: torch.Tensor
    logits: torch.Tensor | None

    def request_kv(self, j: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Request ``j``'s whole turn K/V (reused + new, padding dropped), per layer [kv, len, d]:
        fresh contiguous copies that do not keep the group's tensors alive."""
        idx = self.suf_valid[j].nonzero()[:, 0]
        return (
            [k[j].index_select(1, idx) for k in self.suf_k],
            [v[j].index_select(1, idx) for v in self.suf_v],
        )


class _GroupBuffer:
    """One prefix group's keys for the decode steps, built once per decode (per layer [kv, L, d]):

    ``[prefix P | suffix of request 0 .. m-1 (Smax each) | own slots, time-major: t*R + row]``.
    Rows are the group's heads (request-major). ``base`` [R, L_max] bool is what each row may see of
    the context (prefix, its request's real suffix tokens); own slot (t, r) becomes visible to row r
    when it is written. Unwritten slots are zeros (masked; never NaN)."""

    def __init__(self, lm: LeanLM, gp: GroupPrefill, budget: int) -> None:
        dev = lm.device
        m, kv, n, d = gp.tag_k[0].shape
        smax = gp.suf_k[0].shape[2]
        p = gp.prefix[0][0][0].shape[1] if gp.prefix and gp.prefix[0] else 0
        self.rows = m * n
        self.ctx = p + m * smax
        total = self.ctx + (budget + 1) * self.rows
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        for li in range(len(lm.layers)):
            for store, pre, suf, tag in ((self.k, 0, gp.suf_k, gp.tag_k), (self.v, 1, gp.suf_v, gp.tag_v)):
                buf = torch.zeros(kv, total, d, dtype=lm.dtype, device=dev)
                if p:
                    buf[:, :p] = gp.prefix[li][0][pre]
                buf[:, p : self.ctx] = suf[li].transpose(0, 1).reshape(kv, m * smax, d)
                buf[:, self.ctx : self.ctx + self.rows] = tag[li].transpose(0, 1).reshape(kv, self.rows, d)
                store.append(buf)
        see = torch.zeros(self.rows, total, dtype=torch.bool, device=dev)
        see[:, :p] = True
        req = torch.arange(self.rows, device=dev) // n
        for j in range(m):
            see[req == j, p + j * smax : p + (j + 1) * smax] = gp.suf_valid[j]
        see[torch.arange(self.rows, device=dev), self.ctx + torch.arange(self.rows, device=dev)] = True
        self.see = see
        self.ctx_len = gp.ctx_len.repeat_interleave(n)


class RowBatch:
    """The heads being decoded: rows ordered by group (shared prefix), then request, then head.

    ``live`` holds the original indices of the rows still decoding (ascending); ``keep(idx)`` drops
    the others (their slots stay in the buffers, unread). ``t`` is the own position written next."""

    def __init__(self, lm: LeanLM, groups: list[GroupPrefill], budget: int) -> None:
        self.lm = lm
        self.groups = [_GroupBuffer(lm, g, budget) for g in groups]
        starts, a = [], 0
        for gb in self.groups:
            starts.append(a)
            a += gb.rows
        self.starts = starts
        self.live = list(range(a))
        self.ctx_len = torch.cat([gb.ctx_len for gb in self.groups])
        self.t = 1  # the tag token (own position 0) is already in the buffer

    def spans(self) -> list[tuple[_GroupBuffer, int, int, torch.Tensor]]:
        """Per group with live rows: (buffer, first live slot, end slot, own-slot key index of each)."""
        out, a = [], 0
        for gb, start in zip(self.groups, self.starts, strict=True):
            local = [r - start for r in self.live if start <= r < start + gb.rows]
            if local:
                idx = torch.tensor(local, dtype=torch.long, device=self.ctx_len.device)
                out.append((gb, a, a + len(local), gb.ctx + self.t * gb.rows + idx))
                a += len(local)
        return out

    def masks_for_step(self) -> list[torch.Tensor]:
        """Per span: the attention mask [1, 1, g*rows, keys] of this step (rows see their slot t)."""
        out = []
        for gb, _, _, slots in self.spans():
            local = slots - gb.ctx - self.t * gb.rows
            gb.see[local, slots] = True
            keys = gb.ctx + (self.t + 1) * gb.rows
            out.append(self.lm._additive(gb.see[local, :keys]).repeat(self.lm.group, 1)[None, None])
        return out

    def keep(self, idx: list[int]) -> None:
        """Keep only rows ``idx`` (ascending row indices of the current batch)."""
        self.live = [self.live[i] for i in idx]
        self.ctx_len = self.ctx_len.index_select(0, torch.tensor(idx, device=self.ctx_len.device))
