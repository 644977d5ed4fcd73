"""Checks the vLLM backend makes before vLLM starts: quantization vs hardware, head size, options.

These need no vLLM install. ``cpu_has_int4_kernels`` is replaced in one test by a stand-in that
answers "AVX2 only": this machine may have AVX-512, and a CPU cannot be swapped inside a test.
"""

from __future__ import annotations

import json

import pytest
from tickcall.models import vllm_checks as vc
from tickcall.models import vllm_engine as ve

W4A16_CONFIG = {
    "model_type": "qwen2", "hidden_size": 128, "num_attention_heads": 4,
    "quantization_config": {
        "quant_method": "compressed-tensors", "format": "pack-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "input_activations": None, "weights": {
            "num_bits": 4, "type": "int", "symmetric": False, "strategy": "group", "group_size": 128}}},
        "ignore": ["lm_head"]},
}


def test_quantization_summary_reads_compressed_tensors_and_awq():
    assert vc.quantization_summary({"model_type": "qwen2"}) is None
    q = vc.quantization_summary(W4A16_CONFIG)
    assert q == {"method": "compressed-tensors", "format": "pack-quantized", "weight_bits": 4, "group_size": 128}
    awq = vc.quantization_summary({"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 64}})
    assert awq["weight_bits"] == 4 and awq["group_size"] == 64


def test_int4_on_avx2_cpu_is_refused_clearly(monkeypatch):
    monkeypatch.setattr(vc, "cpu_has_int4_kernels", lambda: False)  # stand-in for an AVX2-only CPU
    with pytest.raises(vc.UnsupportedQuantizationError, match="AVX-512.*AVX2"):
        vc.check_quantization_runs(W4A16_CONFIG, "cpu")
    vc.check_quantization_runs(W4A16_CONFIG, "cuda")  # GPUs have int4 kernels
    vc.check_quantization_runs({"model_type": "qwen2"}, "cpu")  # dense runs anywhere
    eight_bit = json.loads(json.dumps(W4A16_CONFIG))
    eight_bit["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] = 8
    vc.check_quantization_runs(eight_bit, "cpu")


def test_int4_allowed_where_kernels_exist(monkeypatch):
    monkeypatch.setattr(vc, "cpu_has_int4_kernels", lambda: True)
    vc.check_quantization_runs(W4A16_CONFIG, "cpu")


def test_cpu_head_size_check():
    vc.check_head_size({"hidden_size": 64, "num_attention_heads": 2}, "cpu")  # 32: supported
    with pytest.raises(vc.UnsupportedModelError, match="head size 16"):
        vc.check_head_size({"hidden_size": 64, "num_attention_heads": 4}, "cpu")
    vc.check_head_size({"hidden_size": 64, "num_attention_heads": 4}, "cuda")


def test_engine_refuses_before_starting_vllm(tmp_path, monkeypatch):
    """The clear errors come before any vLLM import: they work where vLLM is not installed."""
    (tmp_path / "config.json").write_text(json.dumps(W4A16_CONFIG))
    monkeypatch.setattr(vc, "cpu_has_int4_kernels", lambda: False)  # stand-in for an AVX2-only CPU
    with pytest.raises(vc.UnsupportedQuantizationError):
        ve.VLLMEngine(tmp_path, device="cpu")
    with pytest.raises(vc.EngineError, match="no config.json"):
        ve.VLLMEngine(tmp_path / "missing", device="cpu")
    with pytest.raises(ValueError, match="prefix_align"):
        ve.VLLMEngine(tmp_path, device="cpu", prefix_align="left")


def test_reaper_ends_watched_processes_when_the_owner_is_killed(tmp_path):
    """tickcall.models.vllm_reaper without vLLM: an owner process starts a long ``sleep`` (standing in for vLLM's
    engine core) and a reaper watching it; SIGKILL the owner: the reaper ends the sleep."""
    import os
    import signal
    import subprocess
    import sys

    psutil = pytest.importorskip("psutil")
    code = ("import subprocess, sys, time\n"
            "from tickcall.models.vllm_reaper import start_reaper\n"
            "child = subprocess.Popen(['sleep', '300'])\n"
            "start_reaper([child.pid], grace_s=1.0)\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(300)\n")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=repo)
    child = psutil.Process(int(owner.stdout.readline()))
    try:
        assert child.is_running()
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        _, alive = psutil.wait_procs([child], timeout=20)
        assert not alive, "the watched process outlived its SIGKILLed owner"
    finally:
        if child.is_running():
            child.kill()


def test_reaper_never_signals_a_reused_pid():
    """A pid whose start time differs from the recorded one is another process: left alone."""
    import os

    from tickcall.models import vllm_reaper

    me = vllm_reaper.describe([os.getpid()])
    assert me and me[0]["pid"] == os.getpid()
    stale = [{"pid": os.getpid(), "create_time": me[0]["create_time"] - 100.0}]
    assert vllm_reaper.reap(stale, grace_s=0.1) == 0  # this test process is still running
    assert vllm_reaper.describe([2**22 + 12345]) == []  # no such pid
