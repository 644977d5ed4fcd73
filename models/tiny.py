"""Our own small tokenizers and Qwen2-architecture models, built locally (no hub, no downloads).

``build_tokenizer(corpus, vocab_size, max_heads=6)`` trains a byte-level BPE that holds the chat
tokens and the SimpleTool tokens of ``max_heads`` argument heads (``format.special_tokens``: the
public checkpoints' 17 for 6) as single ids and splits digits one per token (numbers stay learnable
for tiny models). ``make_tiny_model(path, max_heads=6)`` writes a randomly initialised Qwen2 model
folder with such a tokenizer: the test fixture for every engine test, and the starting point of a
student. Its ``tickcall.json`` records ``max_heads`` when it is not 6, so a 6-head folder is the same
bytes as before more heads existed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tickcall.models.format import (
    CHAT_TOKENS,
    SPECIAL_TOKENS,
    TEMPLATES,
    Turn,
    check_max_heads,
    max_heads_meta,
    special_tokens,
)
from tickcall.models.tools import MAX_ARITY, normalize_tools

PAD_TOKEN = "<|endoftext|>"
ALL_ADDED_TOKENS: tuple[str, ...] = (PAD_TOKEN, *CHAT_TOKENS, *SPECIAL_TOKENS)


def added_tokens(max_heads: int = MAX_ARITY) -> tuple[str, ...]:
    """The tokens a tiny tokenizer holds atomically, in id order: pad, chat, ``special_tokens(max_heads)``
    (``ALL_ADDED_TOKENS`` for 6, so the public-checkpoint layout keeps its ids)."""
    return (PAD_TOKEN, *CHAT_TOKENS, *special_tokens(max_heads))


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 512, max_heads: int = MAX_ARITY):
    """A ``PreTrainedTokenizerFast``: byte-level BPE, digits split, chat + SimpleTool tokens of
    ``max_heads`` argument heads atomic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(added_tokens(max_heads)),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token=PAD_TOKEN,
                                   bos_token=None, unk_token=None)
    return fast


def default_corpus() -> list[str]:
    """Text shaped like our prompts (templates, JSON tool schemas, key=value observations)."""
    tools = normalize_tools([
        {"type": "function", "function": {"name": "move", "description": "Move the player.",
                                          "parameters": {"type": "object", "properties": {
                                              "direction": {"type": "string", "enum": ["up", "down", "left", "right"]},
                                              "speed": {"type": "number", "minimum": 0, "maximum": 1}},
                                              "required": ["direction"]}}},
        {"name": "fire", "description": "Fire at a target.",
         "parameters": {"type": "object", "properties": {"target": {"type": "integer"}}}},
        {"name": "wait", "description": "Do nothing.", "parameters": {"type": "object", "properties": {}}},
    ])
    texts = []
    for tmpl in TEMPLATES.values():
        texts.append(tmpl.prefix(tools))
        texts.append(tmpl.suffix(Turn("x=+0.012 v=-0.340 angle=12.5 target=3", ['move(direction="up")'])))
    texts += ["The quick brown fox jumps over the lazy dog. 0123456789 true false null [] {} \"\" : ,"] * 3
    return texts


def make_tiny_model(path: str | Path, *, hidden: int = 64, layers: int = 2, heads: int = 4,
                    kv_heads: int = 2, intermediate: int = 128, vocab_size: int = 400,
                    seed: int = 0, corpus: Iterable[str] | None = None, template: str = "v2",
                    init_std: float = 0.02, tie_embeddings: bool = True, max_heads: int = MAX_ARITY) -> Path:
    """Write a randomly initialised Qwen2 model + tokenizer (with ``special_tokens(max_heads)``, the 17
    of the public format for 6) to ``path``; ``tickcall.json`` holds the template and, unless it is 6,
    ``max_heads`` (the engines read it with ``format.max_heads_of``).

    For engine tests use ``init_std=0.2, tie_embeddings=False``: with the default small init a random
    model repeats its input token, which would make token-for-token comparisons trivially true.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    check_max_heads(max_heads)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(corpus if corpus is not None else default_corpus(), vocab_size, max_heads)
    tokenizer.save_pretrained(path)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=4096, tie_word_embeddings=tie_embeddings, initializer_range=init_std,
        bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN),
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(path)
    (path / "tickcall.json").write_text(json.dumps({"template": template, **max_heads_meta(max_heads)}, indent=2))
    return path
