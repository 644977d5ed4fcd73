"""The LoRA pieces of the SmolLM2 student, on a tiny local Qwen2 (no download): only adapters and the
new tokens' embedding rows train, and merging the adapters leaves the outputs unchanged."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def test_lora_trains_adapters_and_new_rows_only_and_merges_exactly(tmp_path):
    from tickcall.models.tiny import make_tiny_model
    from tickcall.models.training.smollm2 import add_lora, merge_lora
    from transformers import AutoModelForCausalLM

    path = make_tiny_model(tmp_path / "m", hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64)
    model = AutoModelForCausalLM.from_pretrained(path)
    vocab = model.get_input_embeddings().weight.shape[0]
    first_new = vocab - 5
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = add_lora(model, rank=4, alpha=8, first_new_token=first_new)
    opt = torch.optim.SGD(params, lr=0.5)
    ids = torch.tensor([[1, 2, 3, vocab - 1, vocab - 2, 4]])
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    emb = model.get_input_embeddings().weight.detach()
    assert torch.equal(emb[:first_new], before["model.embed_tokens.weight"][:first_new])
    assert not torch.equal(emb[first_new:], before["model.embed_tokens.weight"][first_new:])
    frozen = model.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(frozen, before["model.layers.0.self_attn.q_proj.weight"]) and not frozen.requires_grad
    model.eval()
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        merge_lora(model)
        merged = model(input_ids=ids).logits
    assert type(model.model.layers[0].mlp.up_proj).__name__ == "Linear"
    assert torch.allclose(adapted, merged, atol=1e-5)
    # the adapters did change the MLP weights (B starts at zero, so this proves training reached them)
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, before["model.layers.0.mlp.up_proj.weight"])
