"""The peft LoRA pieces of the SmolLM2 student, on a tiny local Qwen2 with tied embeddings (no download):
only the adapters and the new tokens' embedding rows train (the tied LM head follows them), merging
leaves the outputs unchanged, and the tree trainer runs under bf16 autocast and checkpoints only the
trained tensors."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")


@pytest.fixture
def tiny(tmp_path):
    from tickcall.models.tiny import make_tiny_model
    from transformers import AutoModelForCausalLM

    path = make_tiny_model(tmp_path / "m", hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64)
    return AutoModelForCausalLM.from_pretrained(path)


def test_adapter_trains_lora_and_new_rows_only_and_merges_exactly(tiny):
    from tickcall.models.training.smollm2 import add_adapter, trained_params

    model = tiny
    vocab = model.get_input_embeddings().weight.shape[0]
    new = [vocab - 1, vocab - 2, vocab - 3]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = add_adapter(model, new, rank=4, alpha=8)
    params = trained_params(peft_model)
    opt = torch.optim.AdamW(params, lr=0.05)
    ids = torch.tensor([[1, 2, 3, vocab - 1, vocab - 2, 4]])
    for _ in range(3):
        loss = peft_model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
    merged_model = peft_model.merge_and_unload()
    with torch.no_grad():
        merged = merged_model(input_ids=ids).logits
    assert torch.allclose(adapted, merged, atol=1e-5)
    emb = merged_model.get_input_embeddings().weight.detach()
    old = before["model.embed_tokens.weight"]
    keep = [i for i in range(vocab) if i not in new]
    assert torch.equal(emb[keep], old[keep]) and not torch.equal(emb[new], old[new])
    # tied: the LM head is the same matrix, so the new tokens' output rows trained too
    assert merged_model.lm_head.weight.data_ptr() == merged_model.get_input_embeddings().weight.data_ptr()
    for name in ("self_attn.q_proj", "mlp.up_proj"):
        key = f"model.layers.0.{name}.weight"
        assert not torch.equal(merged_model.state_dict()[key], before[key]), name


def test_tree_trainer_bf16_autocast_and_adapter_checkpoint(tiny, tmp_path):
    from tickcall.models.training.rows import Example
    from tickcall.models.training.smollm2 import add_adapter, trained_params
    from tickcall.models.training.trainer import TrainSettings, train

    model = tiny
    vocab = model.get_input_embeddings().weight.shape[0]
    peft_model = add_adapter(model, [vocab - 1], rank=4, alpha=8, targets=("q_proj", "down_proj"))
    ex = Example(
        group="g",
        suffix_ids=[5, 6, 7],
        branches=[[vocab - 1, 8, 9], [10, 11, 12]],
        weights=[1.0, 1.0],
        heads=("function", "arg1"),
    )
    settings = TrainSettings(
        steps=2, batch_size=2, lr=0.01, warmup=1, checkpoint_every=1, threads=1, dtype="bf16"
    )
    ckpt = tmp_path / "adapter.pt"
    res = train(
        model,
        [ex, ex],
        {"g": [1, 2, 3, 4]},
        0,
        settings,
        checkpoint=ckpt,
        progress=False,
        params=trained_params(peft_model),
    )
    assert res["steps"] == 2 and res["loss"] == res["loss"]  # finite
    state = torch.load(ckpt, weights_only=True)
    assert state["model"] and all("lora_" in k or "trainable_tokens" in k for k in state["model"])
    with pytest.raises(ValueError, match="train.dtype"):
        TrainSettings(dtype="fp16")


def test_init_from_loads_a_saved_adapter_and_refuses_another_shape(tmp_path):
    from tickcall.models.tiny import make_tiny_model
    from tickcall.models.training.smollm2 import add_adapter, load_adapter_weights, save_adapter
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_tiny_model(tmp_path / "m", hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64)

    def fresh(rank=4):
        model = AutoModelForCausalLM.from_pretrained(path)
        vocab = model.get_input_embeddings().weight.shape[0]
        return add_adapter(model, [vocab - 1], rank=rank, alpha=8, targets=("q_proj", "down_proj"))

    trained = fresh()
    with torch.no_grad():  # an adapter whose output differs from the base's
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    save_adapter(trained, AutoTokenizer.from_pretrained(path), tmp_path / "adapter", {"base": {}})
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        want = trained(input_ids=ids).logits
        start = fresh()
        before = start(input_ids=ids).logits
        load_adapter_weights(start, tmp_path / "adapter", 4, 8, ("down_proj", "q_proj"))
        got = start(input_ids=ids).logits
    assert not torch.allclose(before, want, atol=1e-3)
    # the file is bf16: the loaded adapter matches the saved one to bf16 rounding
    assert torch.allclose(got, want, atol=2e-2)
    with pytest.raises(ValueError, match="rank 4, alpha 8"):
        load_adapter_weights(fresh(rank=2), tmp_path / "adapter", 2, 8, ("q_proj", "down_proj"))
    with pytest.raises(FileNotFoundError, match="not a SmolLM2 adapter folder"):
        load_adapter_weights(fresh(), path, 4, 8, ("q_proj", "down_proj"))
