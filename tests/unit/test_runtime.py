import torch

from kp2d import runtime


def test_auto_precision_wants_native_bf16_not_emulated(monkeypatch):
    """auto = bf16 only where the CPU computes bf16 natively; plain AVX-512 (oneDNN emulation) is fp32."""
    assert runtime.cpu_has_fast_bf16({"avx512f", "avx512_bf16"})
    assert runtime.cpu_has_fast_bf16({"avx512f", "amx_tile", "amx_bf16"})
    assert runtime.cpu_has_fast_bf16({"asimd", "bf16"})  # aarch64 "Features"
    assert not runtime.cpu_has_fast_bf16({"avx512f", "avx512bw", "avx512_vnni"})
    assert not runtime.cpu_has_fast_bf16(set())
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: {"avx512f"})
    assert runtime.autocast_dtype("auto", cpu) is None
    assert runtime.autocast_dtype("bf16", cpu) is torch.bfloat16  # asked for explicitly: honoured
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert runtime.autocast_dtype("auto", cpu) is torch.bfloat16
    assert runtime.autocast_dtype("fp32", cpu) is None
