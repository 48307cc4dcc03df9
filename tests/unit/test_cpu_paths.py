"""CPU capability detection and the paths chosen from it: every CPU kind's rules, the caps read from the
environment, and WinCLIP's precision choice and bf16/fp32 paths on whatever CPU runs the tests.

Marked ``cpu_paths``: ``.ci/run`` runs these a second time with ``ONEDNN_MAX_CPU_ISA=AVX2
ATEN_CPU_CAPABILITY=avx2``, so an AMX or AVX-512 machine also checks the AVX2 paths. Nothing here is
skipped by CPU kind: where a test needs native bf16 it checks the bf16 path when the CPU has it and the
fp32 fallback otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from adray import cpu
from adray.backbones.open_clip import register_tiny_clip
from adray.detectors import create_detector
from adray.detectors.winclip import model as winclip_model

pytestmark = pytest.mark.cpu_paths

TINY = register_tiny_clip()
AVX2 = ["avx2"]
AVX512 = AVX2 + list(cpu.AVX512_CORE_FLAGS)  # Skylake-SP: no bf16 instructions
AVX512_BF16 = AVX512 + ["avx512_bf16"]  # Cooper Lake, Zen 4
AMX = AVX512_BF16 + ["amx_tile", "amx_bf16"]  # Sapphire Rapids and later


def _kind(flags, env=None, aten="AVX512"):
    return cpu.capabilities_from(flags, env or {}, aten)


# ------------------------------------------------------------------------------------ detection rules


def test_each_cpu_kind_gets_its_level():
    kinds = [(AVX2, "AVX2"), (AVX512, "AVX512"), (AVX512_BF16, "AVX512")]
    assert [_kind(f, aten=a).best for f, a in kinds] == ["avx2", "avx512", "avx512_bf16"]
    amx = _kind(AMX)
    assert amx.best == "amx_bf16" and amx.native_bf16 and amx.onednn_bf16
    assert not _kind(AVX2, aten="AVX2").native_bf16 and not _kind(AVX2, aten="AVX2").onednn_bf16
    assert not _kind(AVX512).native_bf16 and _kind(AVX512).onednn_bf16  # oneDNN emulates bf16 there
    assert cpu.capabilities_from(AMX, {}, "SVE256", architecture="aarch64").best == "baseline"


def test_onednn_cap_makes_an_amx_cpu_an_avx2_one():
    capped = _kind(AMX, {"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert capped.best == "avx2" and not (capped.native_bf16 or capped.onednn_bf16 or capped.avx512)
    assert capped.onednn_max_isa == "AVX2" and "amx_bf16" in capped.hardware  # what the CPU has, still shown
    assert _kind(AMX, {"ONEDNN_MAX_CPU_ISA": "avx512_core_bf16"}).best == "avx512_bf16"
    assert _kind(AMX, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}).best == "avx512"
    assert _kind(AMX, {"DNNL_MAX_CPU_ISA": "AVX2"}).best == "avx2"  # oneDNN's older name
    assert _kind(AMX, {"ONEDNN_MAX_CPU_ISA": "DEFAULT"}).best == "amx_bf16"
    assert _kind(AMX, {"ONEDNN_MAX_CPU_ISA": "NOT_AN_ISA"}).best == "amx_bf16"  # oneDNN ignores it too
    assert _kind(AMX, {"ONEDNN_MAX_CPU_ISA": "SSE41"}).best == "baseline"


def test_aten_cap_takes_avx512_and_bf16_away():
    assert _kind(AMX, aten="AVX2").best == "avx2"
    assert _kind(AMX, aten="DEFAULT").best == "baseline"
    # a oneDNN probe that says no (e.g. a torch build without bf16 kernels) wins over the flags
    assert not cpu.capabilities_from(AMX, {}, "AVX512", onednn_bf16_probe=False).native_bf16


def _detect_in_subprocess(**caps: str) -> dict:
    """cpu_capabilities() in a fresh interpreter with exactly these caps (the variables are read once)."""
    names = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(caps)
    code = "import json; from adray.cpu import cpu_capabilities as c; print(json.dumps(c().as_dict()))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_caps_from_the_environment_are_honoured_in_a_fresh_process():
    free = _detect_in_subprocess()
    assert free["onednn_max_isa"] is None and free["avx2"] == ("avx2" in free["hardware"])
    capped = _detect_in_subprocess(ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")
    assert capped["onednn_max_isa"] == "AVX2" and capped["hardware"] == free["hardware"]
    assert (capped["best"], capped["native_bf16"], capped["onednn_bf16"]) == (
        "avx2" if free["avx2"] else "baseline",
        False,
        False,
    )
    lowest = _detect_in_subprocess(ONEDNN_MAX_CPU_ISA="SSE41", ATEN_CPU_CAPABILITY="default")
    assert (lowest["best"], lowest["aten_capability"]) == ("baseline", "DEFAULT")


def test_this_process_honours_its_caps():
    caps = cpu.cpu_capabilities()
    assert caps is cpu.cpu_capabilities()  # detected once per process
    given = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    assert caps.onednn_max_isa == (given.strip().upper() or None)
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() == "AVX2":  # the capped run of .ci/run
        assert caps.best in ("avx2", "baseline") and not caps.native_bf16 and not caps.onednn_bf16
    assert caps.summary().startswith(caps.best)


# ------------------------------------------------------------------------------------ WinCLIP precision


@pytest.mark.parametrize(
    ("flags", "aten", "auto", "bf16"),
    [
        (AVX2, "AVX2", "fp32", "fp32"),
        (AVX512, "AVX512", "fp32", "fp32"),
        (AVX512_BF16, "AVX512", "fp32", "bf16"),
        (AMX, "AVX512", "bf16", "bf16"),
    ],
)
def test_precision_choice_per_cpu_kind(monkeypatch, caplog, flags, aten, auto, bf16):
    monkeypatch.setattr(cpu, "cpu_capabilities", lambda: cpu.capabilities_from(flags, {}, aten))
    monkeypatch.setattr(winclip_model, "_NOTES_LOGGED", set())
    device = torch.device("cpu")
    assert winclip_model.effective_precision("auto", device) == (auto, None)
    assert winclip_model.effective_precision("fp32", device) == ("fp32", None)
    with caplog.at_level(logging.WARNING, logger=winclip_model.__name__):
        got, note = winclip_model.effective_precision("bf16", device)
        again = winclip_model.effective_precision("bf16", device)
    assert got == bf16 and again == (got, note)
    if bf16 == "bf16":
        assert note is None and not caplog.records
    else:  # one log line per process saying what runs instead and why
        assert "no native bf16" in note and "running fp32" in note
        assert [r.getMessage() for r in caplog.records] == [note]
    with pytest.raises(ValueError, match="needs CUDA"):
        winclip_model.effective_precision("fp16", device)


def _rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (80, 100, 3), dtype=np.uint8)


def test_bf16_request_runs_the_path_this_cpu_has():
    kwargs = dict(class_name="metal_nut", model_name=TINY, weights="random", device="cpu")
    fp32 = create_detector("winclip", precision="fp32", **kwargs)
    bf16 = create_detector("winclip", precision="bf16", **kwargs)
    auto = create_detector("winclip", precision="auto", **kwargs)
    batch = torch.from_numpy(np.stack([fp32.preprocess({"image": _rgb(s)})["image"] for s in (11, 12)]))
    ref, low = fp32.score(batch), bf16.score(batch)
    caps = cpu.cpu_capabilities()
    assert auto.effective_precision == ("bf16" if caps.amx_bf16 else "fp32")
    assert bf16.version == fp32.version == auto.version  # precision is a runtime choice, not the model
    torch.testing.assert_close(low.image_score, ref.image_score, atol=1e-6, rtol=0)  # full pass stays fp32
    if caps.native_bf16:
        assert (bf16.effective_precision, bf16.window_dtype) == ("bf16", torch.bfloat16)
        assert bf16.precision_note is None
        deviation = (low.anomaly_map - ref.anomaly_map).abs().max()
        assert 0 < deviation < 0.02  # bf16 windows really ran, close to fp32 (2-layer random model)
    else:
        assert (bf16.effective_precision, bf16.window_dtype) == ("fp32", None)
        assert "no native bf16" in bf16.precision_note
        torch.testing.assert_close(low.anomaly_map, ref.anomaly_map, atol=0, rtol=0)
    with pytest.raises(ValueError, match="needs CUDA"):
        create_detector("winclip", precision="fp16", **kwargs)


def test_cli_says_which_precision_runs(tmp_path, capsys):
    import argparse

    from PIL import Image

    from adray.commands import winclip as command

    Image.fromarray(_rgb(3)).save(tmp_path / "a.png")
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(
        [str(tmp_path / "a.png"), "--class-name", "bottle", "--weights", "random", "--model", TINY]
        + ["--device", "cpu", "--precision", "bf16"]
    )
    assert command.run(args) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 1
    header = captured.err.splitlines()[0]
    if cpu.cpu_capabilities().native_bf16:
        assert "precision=bf16 " in header
    else:
        assert "precision=fp32 (bf16 requested)" in header


# ------------------------------------------------------------------------------------ fused kernels


def test_fused_linear_gelu_only_where_onednn_has_bf16_kernels(monkeypatch):
    from adray.backbones.open_clip import (
        _HAS_LINEAR_POINTWISE,
        _mlp,
        bf16_matmul_weights,
        fused_linear_gelu_available,
        load_clip,
    )

    assert fused_linear_gelu_available() == (_HAS_LINEAR_POINTWISE and cpu.cpu_capabilities().onednn_bf16)
    transformer = load_clip(TINY, "random", device="cpu").model.visual.transformer
    mlp = bf16_matmul_weights(transformer).resblocks[0].mlp
    h = torch.randn(7, 5, 64, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    calls: list = []
    if _HAS_LINEAR_POINTWISE:
        fused_kernel = torch.ops.mkldnn._linear_pointwise
        monkeypatch.setattr(
            torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(a[3]) or fused_kernel(*a)
        )
    with torch.inference_mode():
        out, plain = _mlp(mlp, h), mlp(h)
    assert out.dtype == torch.bfloat16
    if fused_linear_gelu_available():
        assert calls == ["gelu"]
        torch.testing.assert_close(out.float(), plain.float(), atol=0.05, rtol=0.02)
    else:  # AVX2 (or capped): oneDNN has no bf16 inner product, so the plain MLP runs, unchanged
        assert calls == []
        torch.testing.assert_close(out, plain, atol=0, rtol=0)


def test_winclip_benchmark_reports_the_cpu_and_what_each_precision_runs(capsys):
    import argparse

    from adray.bench import winclip as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--model", TINY, "--repeats", "1", "--shots", "1", "--batch-size", "1"])
    result = bench.run(args)
    caps = cpu.cpu_capabilities()
    assert f"CPU: {caps.summary()}" in result["notes"] and result["cpu"]["best"] == caps.best
    assert result["auto"] == ("bf16" if caps.amx_bf16 else "fp32")
    assert any(n.startswith(f"precision auto chose: {result['auto']}") for n in result["notes"])
    bf16_rows = [r for r in result["rows"] if r["precision"] == "bf16"]
    if caps.native_bf16:  # timed, with its deviation from fp32 judged against the documented tolerance
        assert [r["runs"] for r in bf16_rows] == ["bf16", "bf16"]
        assert all(r["images/s"] > 0 and isinstance(r["within tolerance"], bool) for r in bf16_rows)
    else:  # reported as falling back, not timed
        assert bf16_rows == [{"mode": "winclip", "precision": "bf16", "runs": "fp32 (fallback, not timed)"}]
        assert any(n.startswith("fallback bf16:") and "no native bf16" in n for n in result["notes"])
    assert "CPU:" in capsys.readouterr().out
