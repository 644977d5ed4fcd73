"""Token masks for SimpleTool heads: compile a registration's head grammars once, guide decode rows.

Semantics shared by both backends (tests check they agree call for call):

1. Every head decodes under its *start* rule (``models.grammars``): the function head under the tool
   names, each argument head under the union of what its slot allows over all tools. Its stop
   tokens are its closing tag and ``<|im_end|>``, and ``<|null|>`` only where it may be omitted; they
   are allowed only once the text is a complete sentence. Every other special token is never allowed.
2. A head that reaches its token budget unfinished is closed by the grammar, without the model: the
   stop tag if allowed, else closing quotes/brackets, else the lowest allowed id, until it stops;
   so every head ends in a legal text.
3. Once the function head has chosen a tool, an argument head whose tokens the chosen tool's rule
   does not accept is re-decoded from its tag under that rule. The transformers backend notices a
   dead prefix mid-decode and stops the row early; the outcome is the same as checking at the end.
4. Jump-forward of a forced stop (transformers backend): when all a row may emit next is its closing
   tag or ``<|im_end|>`` (two stops with the same meaning), the row is finished with its closing tag
   without another forward pass. Where the row has a chosen tool's shadow, what that rule allows
   counts: anything else would kill the row, and its re-decode replays the same tokens (the chosen
   rule's argmax is the start rule's while the shadow accepts) up to the same choice among the stops.
   So the call is the one the model would have made; ``<|null|>`` (which changes the meaning) blocks it.
5. Canonical literals (transformers backend, ``Constrainer(canonical=True)``; off by default): a head
   whose rule is a finite set of literal texts (tool names, string enums: ``HeadRule.texts``) may write
   each text only as the tokenizer writes it after the head's tag, the way training text is tokenized.
   Where one text is another's prefix in characters but not in tokens (SmolLM2 writes ``N`` and ``NE``
   as one token each), a row that wrote ``N`` is then complete and nothing else may follow, so rule 4
   finishes it without the forward that would only have chosen between the stop and a spelling the
   model never saw (``N`` + ``E``). The call can differ from the unrestricted decode only where the
   model would have preferred such a spelling; the other backend does not restrict spellings. A
   tokenizer that does not write a text back exactly (decode(encode(text)) != text) leaves that rule
   unrestricted.

Compiled grammars are kept with the registration (``Registration.grammars``) and deduplicated by
their text per engine (a bounded LRU of ``CACHE_ENTRIES``: a service fed endless distinct tool sets
stays flat), so identical parameter schemas across tools and registrations compile once.
Per decide only matchers are created (microseconds each).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import xgrammar as xgr
from tickcall.models.format import IM_END, NULL, close_tag, open_tag
from tickcall.models.grammars import HeadGrammars, HeadRule, build_head_grammars

CLOSE_PATH_LIMIT = 64  # tokens a grammar-closed head may receive beyond its budget
# Compiled grammars kept for reuse by later registrations (LRU): a service that sees endless distinct
# tool sets (one client registering new tools forever) must not grow without bound.
CACHE_ENTRIES = 512
_CLOSERS = ('"', "]", "}", ",", "0", " ")  # tried in order after the stop tag when closing a head


@dataclass(frozen=True)
class CompiledRule:
    """One head rule, compiled: the grammar, its EBNF text (vLLM's structured outputs) and whether
    the head may be omitted."""

    compiled: xgr.CompiledGrammar
    text: str
    nullable: bool
    texts: frozenset[str] | None = None  # the rule's finite set of literal texts (grammars.HeadRule)


@dataclass
class CompiledHeads:
    """A registration's compiled rules (see ``HeadGrammars``) and their one-time cost (ms)."""

    start: dict[str, CompiledRule]
    chosen: dict[tuple[str, str], CompiledRule]
    weaker: list[str]
    compile_ms: float
    tool_names: frozenset[str] = field(default_factory=frozenset)


class CanonicalTexts:
    """The tokens a literal head may write under rule 5: the tokenizer's own spelling of each text.

    ``bits(prefix)`` is a bitmask row (xgrammar's layout) of the tokens that continue ``prefix`` (ids
    written so far) along some text's spelling, plus every stop id (the grammar decides when a stop
    is allowed). Rows are built once per prefix and kept: a rule has a few short spellings."""

    def __init__(self, spellings: list[tuple[int, ...]], stops: list[int], vocab_size: int) -> None:
        self._next: dict[tuple[int, ...], set[int]] = {}
        for ids in spellings:
            for k in range(len(ids)):
                self._next.setdefault(ids[:k], set()).add(ids[k])
        self._stops = stops
        self._vocab_size = vocab_size
        self._rows: dict[tuple[int, ...], torch.Tensor] = {}

    def bits(self, prefix: tuple[int, ...]) -> torch.Tensor:
        row = self._rows.get(prefix)
        if row is None:
            row = torch.zeros_like(xgr.allocate_token_bitmask(1, self._vocab_size)[0])
            for tok in (*self._next.get(prefix, ()), *self._stops):
                if tok < self._vocab_size:
                    row[tok >> 5] |= _bit(tok & 31)
            self._rows[prefix] = row
        return row


def _bit(b: int) -> int:
    """Bit ``b`` of an int32 mask word as a Python int torch stores in int32 (bit 31 is negative)."""
    return -(1 << 31) if b == 31 else 1 << b


class Constrainer:
    """xgrammar state for one tokenizer and vocabulary.

    ``tokenizer``: a transformers tokenizer; ``vocab_size``: rows of the model's output layer (may
    exceed the tokenizer's length); ``token_ids``: the SimpleTool and chat token ids; ``canonical``:
    literal heads write their texts only as the tokenizer spells them (rule 5 of the module doc)."""

    def __init__(
        self, tokenizer: Any, vocab_size: int, token_ids: dict[str, int], *, canonical: bool = False
    ) -> None:
        self.tokenizer = tokenizer
        self.canonical = canonical
        self._canon: dict[tuple[str, frozenset[str]], CanonicalTexts | None] = {}
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        # our cache below is the only one: xgrammar's own is unbounded by default
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        self.vocab_size = vocab_size
        self.token_ids = token_ids
        self.null_id = token_ids[NULL]
        special = {int(i) for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        special |= set(token_ids.values())
        self.special_ids = sorted(i for i in special if i < vocab_size)
        self._ban: dict[tuple[str, bool], torch.Tensor] = {}
        self._keep: dict[tuple[str, bool], torch.Tensor] = {}
        self._cache: OrderedDict[str, xgr.CompiledGrammar] = OrderedDict()  # LRU, CACHE_ENTRIES at most
        self._closer_ids = []
        for ch in _CLOSERS:
            ids = tokenizer.encode(ch, add_special_tokens=False)
            if len(ids) == 1:
                self._closer_ids.append(ids[0])

    # ---------------------------------------------------------------- compile (per registration)
    def clear_cache(self) -> None:
        """Forget compiled grammars (benchmarks measure a registration's cost from nothing)."""
        self._cache.clear()
        self.compiler.clear_cache()

    def _compile(self, rule: HeadRule) -> CompiledRule:
        text = str(rule.grammar)
        compiled = self._cache.get(text)
        if compiled is None:
            compiled = self._cache[text] = self.compiler.compile_grammar(text)
            if len(self._cache) > CACHE_ENTRIES:  # a registration keeps its own grammars alive
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(text)
        return CompiledRule(compiled, text, rule.nullable, rule.texts)

    def compile(self, tools: list[Any], heads: tuple[str, ...], allow_no_call: bool = False) -> CompiledHeads:
        """Compile every rule of a registration (done once, at ``register``)."""
        t0 = time.perf_counter()
        grammars: HeadGrammars = build_head_grammars(tools, heads, allow_no_call)
        start = {head: self._compile(rule) for head, rule in grammars.start.items()}
        chosen = {key: self._compile(rule) for key, rule in grammars.chosen.items()}
        return CompiledHeads(
            start=start,
            chosen=chosen,
            weaker=grammars.weaker,
            compile_ms=(time.perf_counter() - t0) * 1e3,
            tool_names=frozenset(t.name for t in tools),
        )

    def canonical_texts(self, head: str, rule: CompiledRule) -> CanonicalTexts | None:
        """Rule 5's spellings of ``rule``'s literal texts for ``head``: None where the constrainer is
        not canonical, the rule is not a finite set of literals, or the tokenizer does not write one
        of its texts back exactly. A text's spelling is its tokens between the head's tags, tokenized
        as one string the way training text is (``<head>TEXT</head>``)."""
        if not self.canonical or not rule.texts:
            return None
        key = (head, rule.texts)
        if key not in self._canon:
            self._canon[key] = self._spell(head, rule)
        return self._canon[key]

    def _spell(self, head: str, rule: CompiledRule) -> CanonicalTexts | None:
        first, last = self.token_ids[open_tag(head)], self.token_ids[close_tag(head)]
        spellings = []
        for text in sorted(rule.texts or ()):
            ids = self.tokenizer.encode(open_tag(head) + text + close_tag(head), add_special_tokens=False)
            if len(ids) < 3 or ids[0] != first or ids[-1] != last:
                return None
            body = tuple(ids[1:-1])
            if self.tokenizer.decode(list(body)) != text:
                return None
            spellings.append(body)
        return CanonicalTexts(spellings, self.stop_ids(head, True), self.vocab_size)

    # ---------------------------------------------------------------- helpers
    def stop_ids(self, head: str, nullable: bool) -> list[int]:
        """A head's stop tokens under a rule: its closing tag and ``<|im_end|>`` (the stops of the
        unconstrained decode, so legal greedy output is unchanged), and ``<|null|>`` where omittable."""
        stops = [self.token_ids[close_tag(head)], self.token_ids[IM_END]]
        return [*stops, self.null_id] if nullable else stops

    def banned(self, head: str, nullable: bool) -> torch.Tensor:
        """Ids a head may never emit: every special token that is not one of its stop tokens."""
        ban = self._ban.get((head, nullable))
        if ban is None:
            keep = set(self.stop_ids(head, nullable))
            ban = torch.tensor([i for i in self.special_ids if i not in keep], dtype=torch.long)
            self._ban[(head, nullable)] = ban
        return ban

    def keep_bits(self, head: str, nullable: bool) -> torch.Tensor:
        """A token bitmask row (xgrammar's layout) with the head's banned ids cleared, all else set."""
        bits = self._keep.get((head, nullable))
        if bits is None:
            row = xgr.allocate_token_bitmask(1, self.vocab_size)[0]  # all ones
            for tok in self.banned(head, nullable).tolist():
                row[tok >> 5] &= ~(1 << (tok & 31))
            bits = self._keep[(head, nullable)] = row
        return bits

    def chosen_tool(
        self, ids: list[int], decode: Callable[[list[int]], str], grammars: CompiledHeads
    ) -> str | None:
        """The tool a finished function head (``ids``, stop token included) named: None for
        ``<|null|>``, an unfinished head or a name that is not registered. ``decode``: ids -> text."""
        if not ids or ids[-1] not in (self.token_ids[close_tag("function")], self.token_ids[IM_END]):
            return None
        name = decode(ids[:-1]).strip()
        return name if name in grammars.tool_names else None

    def matcher(self, head: str, rule: CompiledRule) -> xgr.GrammarMatcher:
        return xgr.GrammarMatcher(rule.compiled, override_stop_tokens=self.stop_ids(head, rule.nullable))

    def accepts(self, head: str, rule: CompiledRule, ids: list[int]) -> bool:
        """True when ``ids`` (a whole head, stop token included) is legal under ``rule``."""
        m = self.matcher(head, rule)
        return bool(ids) and all(m.accept_token(t) for t in ids) and m.is_terminated()

    def _next_for_closing(self, m: xgr.GrammarMatcher, head: str, rule: CompiledRule) -> int | None:
        bm = xgr.allocate_token_bitmask(1, self.vocab_size)
        m.fill_next_token_bitmask(bm)
        words = bm[0]
        banned = set(self.banned(head, rule.nullable).tolist())

        def allowed(tok: int) -> bool:
            return tok < self.vocab_size and tok not in banned and (int(words[tok >> 5]) >> (tok & 31)) & 1

        for tok in (self.token_ids[close_tag(head)], *self._closer_ids):
            if allowed(tok):
                return tok
        for w in torch.nonzero(words).flatten().tolist():
            for bit in range(32):
                if allowed((w << 5) + bit):
                    return (w << 5) + bit
        return None

    def close(self, head: str, rule: CompiledRule, ids: list[int]) -> list[int] | None:
        """Tokens that finish a head cut at its budget (``ids`` so far), chosen without the model:
        the closing tag if allowed, else a closing character, else the lowest allowed id, until the
        head stops. None when ``rule`` rejects ``ids`` or no completion is found within the limit."""
        m = self.matcher(head, rule)
        if not all(m.accept_token(t) for t in ids):
            return None
        stops = self.stop_ids(head, rule.nullable)
        path: list[int] = []
        for _ in range(CLOSE_PATH_LIMIT):
            tok = self._next_for_closing(m, head, rule)
            if tok is None:
                return None
            m.accept_token(tok)
            path.append(tok)
            if tok in stops:
                return path
        return None


class RowGuide:
    """One decode row's grammar state: its rule and matcher, and (once the function head resolved) a
    *shadow* matcher of the chosen tool's rule that must accept every token too."""

    __slots__ = ("head", "rule", "stops", "keep", "matcher", "shadow", "dead", "canon", "ids")

    def __init__(self, constrainer: Constrainer, head: str, rule: CompiledRule) -> None:
        self.head = head
        self.rule = rule
        self.stops = constrainer.stop_ids(head, rule.nullable)
        self.keep = constrainer.keep_bits(head, rule.nullable)
        self.matcher = constrainer.matcher(head, rule)
        self.shadow: xgr.GrammarMatcher | None = None
        self.dead = False  # the chosen tool's rule rejected this row's prefix: re-decode it
        self.canon = constrainer.canonical_texts(head, rule)  # rule 5, or None
        self.ids: tuple[int, ...] = ()  # tokens this row's matcher accepted

    def accept(self, tok: int) -> None:
        """The row wrote ``tok``: advance its matcher (and its shadow, marking the row dead where the
        chosen tool's rule rejects it)."""
        self.matcher.accept_token(tok)
        self.ids += (tok,)
        if self.shadow is not None and not self.dead:
            self.dead = not self.shadow.accept_token(tok)

    def allowed_bits(self) -> torch.Tensor:
        """The tokens rule 5 and the banned ids leave this row (a bitmask row)."""
        return self.keep & self.canon.bits(self.ids) if self.canon is not None else self.keep


def forced_stop(constrainer: Constrainer, guide: RowGuide, close_id: int) -> int | None:
    """The stop token a row can be finished with without the model (see rule 4 of the module
    docstring): ``close_id`` where everything the row may emit next (its rule, its banned ids and, once
    set, its shadow) is ``close_id`` or ``<|im_end|>``; None otherwise. Costs one or two mask fills."""
    end_id = constrainer.token_ids[IM_END]
    bm = xgr.allocate_token_bitmask(2 if guide.shadow is not None else 1, constrainer.vocab_size)
    guide.matcher.fill_next_token_bitmask(bm, 0)
    row = bm[0] & guide.allowed_bits()
    if guide.shadow is not None:
        guide.shadow.fill_next_token_bitmask(bm, 1)
        row &= bm[1]
    words = torch.nonzero(row).flatten().tolist()
    if not words or len(words) > 2:
        return None
    allowed = [(w << 5) + b for w in words for b in range(32) if (int(row[w]) >> b) & 1]
    if close_id not in allowed or not set(allowed) <= {close_id, end_id}:
        return None
    return close_id


def mask_logits(constrainer: Constrainer, guides: list[RowGuide], logits: torch.Tensor) -> None:
    """Restrict ``logits`` [rows, V] (float32) in place to what each row's rule allows next."""
    n, v = logits.shape
    bm = xgr.allocate_token_bitmask(n, constrainer.vocab_size)
    for slot, g in enumerate(guides):
        g.matcher.fill_next_token_bitmask(bm, slot)
    bm &= torch.stack([g.allowed_bits() for g in guides])  # banned specials; rule 5's spellings
    if v > constrainer.vocab_size:  # padded output rows beyond the grammar's vocabulary
        logits[:, constrainer.vocab_size :] = float("-inf")
    if logits.device.type != "cpu":  # matchers fill a CPU mask; the kernel wants it beside the logits
        bm = bm.to(logits.device, non_blocking=True)
    xgr.apply_token_bitmask_inplace(logits, bm, vocab_size=min(v, constrainer.vocab_size))
