"""What this process's CPU can run fast: instruction sets detected at run time, with the users' caps applied.

The CPU-specific fast paths (WinCLIP's bf16 window passes, oneDNN's fused linear+GELU) ask
:func:`cpu_capabilities` instead of assuming the machine they were tuned on. An instruction set counts as
available when the CPU has it **and** neither cap excludes it:

- ``ONEDNN_MAX_CPU_ISA`` (or its older name ``DNNL_MAX_CPU_ISA``): oneDNN's highest instruction set, e.g.
  ``AVX2``, ``AVX512_CORE``, ``AVX512_CORE_BF16``, ``AVX512_CORE_AMX``, ``DEFAULT``/``ALL``. oneDNN itself
  obeys it (a bf16 inner product capped below AVX-512 has no kernel and fails), so we must too.
- ``ATEN_CPU_CAPABILITY`` (``default``, ``avx2``, ``avx512``): ATen's vectorised kernels, read back through
  ``torch.backends.cpu.get_cpu_capability()`` (torch ignores a value above what the CPU has).

With ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` an AMX machine therefore takes the same paths as an
AVX2-only one, which is how the test suite checks the AVX2 paths anywhere (``.ci/run``). Both variables are
read once per process (as oneDNN and ATen do): set them before the process starts.

What the fast paths need:

- ``native_bf16``: bf16 matrix instructions (``amx_bf16`` or ``avx512_bf16``). Without them oneDNN either
  has no bf16 matmul (AVX2: ATen falls back to a reference loop, ~100x slower than fp32) or emulates it
  with AVX-512 conversions (not measured faster than fp32 here), so bf16 is not worth running.
- ``amx_bf16``: Intel AMX tiles for bf16; the only kind on which bf16 WinCLIP windows were measured
  faster than fp32 (2.6-4x on a 2-core Xeon), hence WinCLIP's ``precision="auto"`` choice.
- ``onednn_bf16``: oneDNN has bf16 kernels (its own probe, AVX-512 and up, cap honoured): the fused
  ``torch.ops.mkldnn._linear_pointwise`` may be called with bf16 inputs.
"""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

#: oneDNN's ``ONEDNN_MAX_CPU_ISA`` values (x86) in increasing order; aliases share a rank
_ONEDNN_ISA_RANK: dict[str, int] = {
    "SSE41": 1,
    "AVX": 2,
    "AVX2": 3,
    "AVX2_VNNI": 4,
    "AVX2_VNNI_2": 5,
    "AVX512_CORE": 6,
    "AVX512_CORE_VNNI": 7,
    "AVX512_CORE_BF16": 8,
    "AVX512_CORE_FP16": 9,
    "AVX10_1_512": 9,
    "AVX512_CORE_AMX": 10,
    "AVX10_1_512_AMX": 10,
    "AVX512_CORE_AMX_FP16": 11,
    "AVX10_1_512_AMX_FP16": 11,
    "AVX10_2_512": 12,
    "AVX10_2_512_AMX_2": 13,
}
_NO_CAP = 1_000
#: ATen dispatch levels (``torch.backends.cpu.get_cpu_capability()``), x86
_ATEN_RANK = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}
#: hardware flags we look at, named as /proc/cpuinfo names them; AVX-512 "core" = F + BW + VL + DQ
AVX512_CORE_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq")


@dataclass(frozen=True)
class CpuCapabilities:
    """The CPU's instruction sets as the fast paths may use them (caps applied); see the module docstring.

    ``hardware`` lists what the CPU reports (of ``avx2``, ``avx512f``/``bw``/``vl``/``dq``, ``avx512_bf16``,
    ``amx_tile``, ``amx_bf16``), before caps. ``onednn_max_isa`` is the oneDNN cap as given (upper case,
    ``None`` when unset); ``aten_capability`` is ATen's dispatch level after ``ATEN_CPU_CAPABILITY``
    (``DEFAULT``, ``AVX2``, ``AVX512``; other architectures report their own names). The booleans are
    effective: hardware and both caps.
    """

    architecture: str
    hardware: tuple[str, ...]
    onednn_max_isa: str | None
    aten_capability: str
    avx2: bool
    avx512: bool
    avx512_bf16: bool
    amx_bf16: bool
    onednn_bf16: bool

    @property
    def native_bf16(self) -> bool:
        """bf16 matrix instructions usable by oneDNN: AMX or AVX512_BF16 (after caps)."""
        return self.amx_bf16 or self.avx512_bf16

    @property
    def best(self) -> str:
        """The best effective level: ``amx_bf16``, ``avx512_bf16``, ``avx512``, ``avx2`` or ``baseline``."""
        for name in ("amx_bf16", "avx512_bf16", "avx512", "avx2"):
            if getattr(self, name):
                return name
        return "baseline"

    def summary(self) -> str:
        """One line for logs and benchmark notes, e.g.
        ``avx2 (native bf16: no; hardware: avx2; oneDNN cap: none; ATen: AVX2)``."""
        hardware = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in self.hardware]
        return (
            f"{self.best} (native bf16: {'yes' if self.native_bf16 else 'no'}; hardware: "
            f"{', '.join(hardware) or 'none of avx2/avx512/amx'}; "
            f"oneDNN cap: {self.onednn_max_isa or 'none'}; ATen: {self.aten_capability})"
        )

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "native_bf16": self.native_bf16, "best": self.best}


@functools.lru_cache(maxsize=1)
def cpu_capabilities() -> CpuCapabilities:
    """This process's :class:`CpuCapabilities`, detected once (hardware from torch's cpuinfo probe, else
    ``/proc/cpuinfo``; caps from the environment at the first call)."""
    import torch

    aten = str(torch.backends.cpu.get_cpu_capability()).upper()
    onednn = None
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if torch.backends.mkldnn.is_available() and probe is not None:
        onednn = bool(probe())
    elif not torch.backends.mkldnn.is_available():
        onednn = False
    return capabilities_from(_hardware_flags(), os.environ, aten, onednn, platform.machine())


def capabilities_from(
    flags: Iterable[str],
    env: Mapping[str, str],
    aten_capability: str,
    onednn_bf16_probe: bool | None = None,
    architecture: str = "x86_64",
) -> CpuCapabilities:
    """The effective capabilities for CPU ``flags`` (``/proc/cpuinfo`` names), environment ``env`` and ATen's
    dispatch level; ``onednn_bf16_probe`` is oneDNN's own answer when known (``None``: assume it agrees).

    Pure, so the rules can be checked for any CPU kind on any machine. An unknown ``ONEDNN_MAX_CPU_ISA``
    value is ignored, as oneDNN ignores it.
    """
    hw = frozenset(f.lower() for f in flags)
    cap_text = (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    cap = _ONEDNN_ISA_RANK.get(cap_text, _NO_CAP)
    aten = _ATEN_RANK.get(aten_capability.upper(), -1)
    x86 = architecture.lower() in ("x86_64", "amd64", "x86", "i686")
    avx2 = x86 and "avx2" in hw and cap >= _ONEDNN_ISA_RANK["AVX2"] and aten >= _ATEN_RANK["AVX2"]
    avx512 = (
        avx2
        and all(f in hw for f in AVX512_CORE_FLAGS)
        and cap >= _ONEDNN_ISA_RANK["AVX512_CORE"]
        and aten >= _ATEN_RANK["AVX512"]
    )
    avx512_bf16 = avx512 and "avx512_bf16" in hw and cap >= _ONEDNN_ISA_RANK["AVX512_CORE_BF16"]
    amx_bf16 = avx512 and {"amx_bf16", "amx_tile"} <= hw and cap >= _ONEDNN_ISA_RANK["AVX512_CORE_AMX"]
    onednn_bf16 = avx512 and (onednn_bf16_probe is None or onednn_bf16_probe)
    hardware = tuple(
        f for f in ("avx2", *AVX512_CORE_FLAGS, "avx512_bf16", "amx_tile", "amx_bf16") if f in hw
    )
    return CpuCapabilities(
        architecture=architecture,
        hardware=hardware,
        onednn_max_isa=cap_text or None,
        aten_capability=aten_capability.upper(),
        avx2=avx2,
        avx512=avx512,
        avx512_bf16=avx512_bf16 and onednn_bf16,
        amx_bf16=amx_bf16 and onednn_bf16,
        onednn_bf16=onednn_bf16,
    )


#: torch.cpu.get_capabilities() key -> /proc/cpuinfo flag
_TORCH_FLAG_NAMES = {
    "avx2": "avx2",
    "avx512_f": "avx512f",
    "avx512_bw": "avx512bw",
    "avx512_vl": "avx512vl",
    "avx512_dq": "avx512dq",
    "avx512_bf16": "avx512_bf16",
    "amx_tile": "amx_tile",
    "amx_bf16": "amx_bf16",
}


def _hardware_flags() -> set[str]:
    """CPU flags in /proc/cpuinfo's names: torch's cpuinfo probe (CPUID + OS support) when this torch has
    it, else the first ``flags`` line of /proc/cpuinfo, else none."""
    import torch

    probe = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if probe is not None:
        try:
            caps = probe()
            return {name for key, name in _TORCH_FLAG_NAMES.items() if caps.get(key) is True}
        except Exception:  # an older or unusual build: fall through to /proc/cpuinfo
            pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()
