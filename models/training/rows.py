"""Training rows in the SimpleTool format (docs: simpletool-format.md, "Training data").

One labelled decision becomes one *branch per head*: input = full prompt + ``<head>``, target =
value + ``</head><|im_end|>`` (an unused or omitted slot: ``<|null|></argN><|im_end|>``); the loss is
on the target tokens only, weighted per head (function 2.0, arg1..arg6 1.1..1.6).

Heads: a model with ``max_heads`` argument heads (``format.head_names``; 6 for the public checkpoints,
more for a model of ours that declares ``max_heads`` in its ``tickcall.json``) trains ``function`` and
``arg1``..``argN``; the codec checks its tokenizer holds every one of their tags as a single id.

Token layout (what the engine sees at run time): the static prefix and the per-tick suffix are
tokenised separately and concatenated; a branch is ``[<head>] + tokens(value) + [</head>, <|im_end|>]``
(``<|null|>`` is one token). :class:`Example` keeps the three parts apart so the trainer can run the
prefix once per batch, the suffix once per example, and only the short branches per head.

Soft targets (``RowCodec(soft_tau=...)``, beyond the format's recipe): where the teacher's record
carries scores per value (``Record.logits``), the first value token of that head is trained against
``softmax(logit / soft_tau)`` over the scored values' first tokens instead of the one-hot label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from tickcall.models.format import (
    IM_END,
    NULL,
    Template,
    Turn,
    close_tag,
    encode_call_heads,
    head_names,
    head_target,
    heads_for,
    open_tag,
)
from tickcall.models.prompt_text import make_turn
from tickcall.models.tools import MAX_ARITY, ToolSpec
from tickcall.models.training.collect import Record


def default_head_weights(max_heads: int = MAX_ARITY) -> dict[str, float]:
    """Loss weight per head: function 2.0, ``argI`` 1.0 + 0.1 I (the public recipe's 1.1..1.6 for
    arg1..arg6: later, rarer slots up-weighted). Heads past the sixth keep arg6's 1.6, so the function
    head stays the heaviest however many heads a model has."""
    return {"function": 2.0, **{h: 1.0 + 0.1 * min(int(h[3:]), MAX_ARITY) for h in head_names(max_heads)[1:]}}


DEFAULT_HEAD_WEIGHTS: dict[str, float] = default_head_weights(MAX_ARITY)


def train_heads(tools: Sequence[ToolSpec], mode: str = "all", max_heads: int = MAX_ARITY) -> tuple[str, ...]:
    """Heads trained per example: ``all`` = function + arg1..argN for the model's ``max_heads`` (the
    public recipe: arg1..arg6); ``used`` = the heads the engine decodes for these tools (function +
    arg1..argK, K the largest arity; ValueError when K exceeds ``max_heads``)."""
    if mode == "all":
        return head_names(max_heads)
    if mode == "used":
        return heads_for(tools, max_heads=max_heads)
    raise ValueError(f"heads mode must be 'all' or 'used', not {mode!r}")


def record_turn(record: Record) -> Turn:
    """The user turn of a record: built by ``models.prompt_text.make_turn`` like the run-time turn."""
    return make_turn(record.query, record.history)


def head_values(record: Record, tools: Sequence[ToolSpec], heads: Sequence[str]) -> dict[str, str]:
    """Text each head must produce for the record's call (``<|null|>`` for unused slots)."""
    tool = {t.name: t for t in tools}.get(record.call.name)
    if tool is None:
        raise ValueError(f"teacher called {record.call.name!r}, which is not among the tools")
    return encode_call_heads(record.call, tool, tuple(heads))


def branch_texts(record: Record, tools: Sequence[ToolSpec], template: Template, system: str | None = None,
                 heads_mode: str = "all", max_heads: int = MAX_ARITY) -> list[tuple[str, str, float]]:
    """The rows as text: ``(input, target, weight)`` per head, exactly as the format describes."""
    prompt = template.prefix(tools, system) + template.suffix(record_turn(record))
    heads = train_heads(tools, heads_mode, max_heads)
    values = head_values(record, tools, heads)
    weights = default_head_weights(max_heads)
    return [(prompt + open_tag(h), head_target(h, values[h]), weights[h]) for h in heads]


@dataclass
class Example:
    """One decision, tokenised: shared prefix key, suffix ids, and one branch per head.

    ``branches[k]`` = ``[<head>] + value ids + [</head>, <|im_end|>]``; the model reads
    ``branch[:-1]`` and is scored on ``branch[1:]`` (the target), with weight ``weights[k]``."""

    group: str
    suffix_ids: list[int]
    branches: list[list[int]]
    weights: list[float]
    heads: tuple[str, ...]
    soft: list[SoftTarget] = field(default_factory=list)


@dataclass(frozen=True)
class SoftTarget:
    """A soft target on the first value token of branch ``branch``: probability ``probs[k]`` on token
    ``ids[k]`` (the first token of each value the teacher scored), in place of the one-hot label."""

    branch: int
    ids: tuple[int, ...]
    probs: tuple[float, ...]


class RowCodec:
    """Tokenises records for one tokenizer + template; checks the head tags of ``max_heads`` argument
    heads (the 17 tokens for 6), ``<|null|>`` and ``<|im_end|>`` are single ids."""

    def __init__(self, tokenizer, template: Template, system: str | None = None, heads_mode: str = "all",
                 head_weights: dict[str, float] | None = None, soft_tau: float = 0.0,
                 max_heads: int = MAX_ARITY) -> None:
        if soft_tau < 0:
            raise ValueError(f"soft_tau must be >= 0 (0 = hard labels), not {soft_tau}")
        self.soft_tau = soft_tau
        self.tok = tokenizer
        self.template = template
        self.system = system
        self.heads_mode = heads_mode
        self.max_heads = max_heads
        self.weights = dict(default_head_weights(max_heads), **(head_weights or {}))
        self._ids: dict[str, int] = {}
        names = head_names(max_heads)
        for tag in [IM_END, NULL, *[open_tag(h) for h in names], *[close_tag(h) for h in names]]:
            ids = tokenizer.encode(tag, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(f"tokenizer splits {tag!r} into {len(ids)} tokens; it must be one id")
            self._ids[tag] = ids[0]
        self._value_cache: dict[str, list[int]] = {}

    def token_id(self, tag: str) -> int:
        return self._ids[tag]

    def encode_text(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def prefix_ids(self, tools: Sequence[ToolSpec]) -> list[int]:
        return self.encode_text(self.template.prefix(tools, self.system))

    def suffix_ids(self, turn: Turn) -> list[int]:
        return self.encode_text(self.template.suffix(turn))

    def value_ids(self, value: str) -> list[int]:
        if value == NULL:
            return [self._ids[NULL]]
        ids = self._value_cache.get(value)
        if ids is None:
            ids = self.encode_text(value)
            if len(self._value_cache) < 100_000:
                self._value_cache[value] = ids
        return ids

    def encode(self, record: Record, tools: Sequence[ToolSpec]) -> Example:
        heads = train_heads(tools, self.heads_mode, self.max_heads)
        values = head_values(record, tools, heads)
        branches = [[self._ids[open_tag(h)], *self.value_ids(values[h]), self._ids[close_tag(h)],
                     self._ids[IM_END]] for h in heads]
        return Example(group=record.env_id, suffix_ids=self.suffix_ids(record_turn(record)),
                       branches=branches, weights=[self.weights[h] for h in heads], heads=tuple(heads),
                       soft=self.soft_targets(record, tools, heads, branches))

    def soft_targets(self, record: Record, tools: Sequence[ToolSpec], heads: Sequence[str],
                     branches: list[list[int]]) -> list[SoftTarget]:
        """Soft targets from the teacher's logits: ``softmax(logit / soft_tau)`` over the scored values,
        on each scored argument's first value token (none with ``soft_tau`` 0 or no logits).

        Raises ValueError when the scored values do not start with distinct tokens, or the call's own
        value is not among them, or it does not have the highest logit (the hard label would disagree)."""
        if self.soft_tau <= 0 or not record.logits:
            return []
        tool = {t.name: t for t in tools}[record.call.name]
        out = []
        for param, scores in record.logits.items():
            if param not in tool.param_names:
                raise ValueError(f"teacher logits for {param!r}, which {tool.name} does not take")
            head = f"arg{tool.param_names.index(param) + 1}"
            if head not in heads:
                continue
            chosen = str(record.call.arguments.get(param))
            if chosen not in scores or scores[chosen] < max(scores.values()):
                raise ValueError(f"teacher logits {scores} do not pick the call's {param}={chosen!r}")
            ids = tuple(self.value_ids(v)[0] for v in scores)
            if len(set(ids)) != len(ids):
                raise ValueError(f"the values {list(scores)} do not start with distinct tokens")
            top = max(scores.values())
            e = [math.exp((x - top) / self.soft_tau) for x in scores.values()]
            k = heads.index(head)
            if branches[k][1] not in ids:
                raise ValueError(f"{head}'s first target token is not one of the scored values")
            out.append(SoftTarget(k, ids, tuple(x / sum(e) for x in e)))
        return out
