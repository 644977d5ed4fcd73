"""Prefix -> suffixes -> head branches as one tree of forwards sharing KV caches.

All examples of one env share the static prefix, each example's heads share its prompt. So a batch
runs the prefix once (batch 1), every suffix once (batch B, the prefix KV broadcast), and only the
short head branches per head (batch B*H, the prompt KV repeated per head). Gradients flow through the
cached keys and values, so training on the tree equals training on B*H full sequences
(tests/test_train_tree.py checks the logits match the plain full-sequence forward).

Padding: suffixes and branches are right-padded; masked positions sit *between* the real tokens, so
``position_ids`` are given explicitly (a branch starts at prefix_len + its own suffix_len).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _cache_from(kv: list[tuple[Any, Any]]):
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=kv)


def _cache_tensors(cache) -> list[tuple[Any, Any]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def decoder_and_head(model) -> tuple[Any, Any]:
    """(the transformer body returning hidden states, the LM head)."""
    return model.model, model.lm_head


def pad_right(seqs: Sequence[Sequence[int]], pad: int):
    """Right-pad int lists -> (ids [N, L], mask [N, L], lengths [N]) as torch tensors."""
    import torch

    n, width = len(seqs), max(1, max((len(s) for s in seqs), default=1))
    ids = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask, mask.sum(1)


def prompt_cache(model, prefix_ids: Sequence[int], suffixes: Sequence[Sequence[int]], pad: int):
    """Run prefix (once) and suffixes (batch B). Returns (cache tensors, prefix_len, suffix mask, lens)."""
    import torch

    body, _ = decoder_and_head(model)
    p = len(prefix_ids)
    out = body(input_ids=torch.tensor([list(prefix_ids)], dtype=torch.long), use_cache=True)
    b = len(suffixes)
    kv = [(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in _cache_tensors(out.past_key_values)]
    s_ids, s_mask, s_len = pad_right(suffixes, pad)
    attn = torch.cat([torch.ones((b, p), dtype=torch.long), s_mask], dim=1)
    pos = (p + torch.arange(s_ids.shape[1])).unsqueeze(0).expand(b, -1)
    out = body(input_ids=s_ids, attention_mask=attn, position_ids=pos, past_key_values=_cache_from(kv),
               use_cache=True)
    return _cache_tensors(out.past_key_values), p, s_mask, s_len


def branch_hidden(model, kv, prefix_len: int, s_mask, s_len, branches: Sequence[Sequence[Sequence[int]]],
                  pad: int):
    """Hidden states of every branch: ``branches[b][h]`` is the input ids of head h of example b.

    Returns (hidden [B*H, T, D], branch mask [B*H, T]); rows ordered example-major."""
    import torch

    body, _ = decoder_and_head(model)
    h = len(branches[0])
    flat = [br for ex in branches for br in ex]
    if any(len(ex) != h for ex in branches):
        raise ValueError("every example in a batch must have the same number of heads")
    b_ids, b_mask, _ = pad_right(flat, pad)
    rep_kv = [(k.repeat_interleave(h, dim=0), v.repeat_interleave(h, dim=0)) for k, v in kv]
    sm = s_mask.repeat_interleave(h, dim=0)
    sl = s_len.repeat_interleave(h, dim=0)
    n = b_ids.shape[0]
    attn = torch.cat([torch.ones((n, prefix_len), dtype=torch.long), sm, b_mask], dim=1)
    pos = prefix_len + sl.unsqueeze(1) + torch.arange(b_ids.shape[1]).unsqueeze(0)
    out = body(input_ids=b_ids, attention_mask=attn, position_ids=pos, past_key_values=_cache_from(rep_kv),
               use_cache=False)
    return out.last_hidden_state, b_mask


def tree_loss(model, prefix_ids: Sequence[int], suffixes: Sequence[Sequence[int]],
              branches: Sequence[Sequence[Sequence[int]]], weights: Sequence[Sequence[float]], pad: int,
              soft: Sequence[Sequence[Any]] | None = None):
    """Weighted token cross-entropy on the branch targets.

    ``branches[b][h]`` is the full branch ``[<head>, target...]``; the model reads ``branch[:-1]`` and
    is scored on ``branch[1:]``. Loss = sum(w_h * CE(token)) / sum(w_h) over all target tokens.
    ``soft[b]`` (optional): :class:`models.training.rows.SoftTarget` items of example b; on those
    branches' first target token the CE is against the soft distribution instead of the one-hot.
    Returns (loss, per-branch exact-match bool tensor [B*H] under teacher forcing)."""
    import torch
    import torch.nn.functional as F

    kv, p, s_mask, s_len = prompt_cache(model, prefix_ids, suffixes, pad)
    inputs = [[br[:-1] for br in ex] for ex in branches]
    hidden, b_mask = branch_hidden(model, kv, p, s_mask, s_len, inputs, pad)
    flat_targets = [br[1:] for ex in branches for br in ex]
    t_ids, t_mask, _ = pad_right(flat_targets, pad)
    w = torch.tensor([wt for ex in weights for wt in ex], dtype=hidden.dtype)
    _, head = decoder_and_head(model)
    sel = t_mask.bool()
    logits = head(hidden[sel])  # only target positions: [n_tokens, V]
    ce = F.cross_entropy(logits.float(), t_ids[sel], reduction="none")
    if soft is not None and any(soft):
        # row of token (r, 0) in logits[sel]: the number of target tokens before it
        first = torch.cumsum(t_mask.flatten(), 0).view_as(t_mask)[:, 0] - 1
        h = len(branches[0])
        rows, ids, probs = [], [], []
        for b, items in enumerate(soft):
            for it in items:
                rows.append(int(first[b * h + it.branch]))
                ids.append(list(it.ids))
                probs.append(list(it.probs))
        width = max(len(i) for i in ids)
        id_t = torch.tensor([i + [i[0]] * (width - len(i)) for i in ids], dtype=torch.long)
        pr_t = torch.tensor([p + [0.0] * (width - len(p)) for p in probs], dtype=torch.float32)
        logp = logits[rows].float().log_softmax(-1).gather(1, id_t)
        ce = ce.clone()
        ce[rows] = -(pr_t * logp).sum(1)
    tok_w = w.unsqueeze(1).expand_as(t_mask)[sel]
    loss = (ce * tok_w).sum() / tok_w.sum()
    with torch.no_grad():
        right = torch.ones_like(t_mask, dtype=torch.bool)
        right[sel] = logits.argmax(-1) == t_ids[sel]
        exact = right.all(dim=1)
    return loss, exact
