"""Which precision `--precision auto` runs the exported CPU runtime in, and why.

On a CPU with native bf16 arithmetic (Intel AMX or AVX512_BF16) the exported runtime runs bf16
much faster than fp32 with vectors that agree closely with it (benchmarks/precision.py measures
speed, min/mean cosine and top-10 overlap with a trained model; RESULTS.md). Elsewhere bf16 is
emulated and slower, so `auto` is fp32 there. `--precision fp32` is the exact path everywhere.

The CPU's flags are read from /proc/cpuinfo (no torch, no runtime import); where that file does
not exist (macOS, Windows) `auto` stays fp32. The decision is a pure function of the flags,
`resolve_cpu_precision`, so it is tested without the hardware.
"""

from __future__ import annotations

from collections.abc import Collection
from functools import cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# Either gives bf16 dot products in hardware; OpenVINO itself defaults to bf16 when one is there.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def read_cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The feature flags of the first CPU in `cpuinfo` (Linux); empty when it cannot be read."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


@cache
def cpu_flags() -> frozenset[str]:
    """This machine's CPU flags, read once per process."""
    return read_cpu_flags()


def resolve_cpu_precision(
    requested: str, flags: Collection[str], engine: str = "openvino"
) -> tuple[str, str]:
    """(precision, reason) for the exported runtime `engine` on a CPU with `flags`: `auto` is
    bf16 where the CPU has native bf16 and fp32 elsewhere (always fp32 for onnxruntime, which
    runs these graphs in fp32 only); any other request is kept as asked."""
    if requested != "auto":
        return requested, f"--precision {requested}"
    if engine == "onnxruntime":
        return "fp32", "auto: onnxruntime runs fp32 on CPUs"
    native = [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    if native:
        return "bf16", f"auto: the CPU has native bf16 ({', '.join(native)})"
    return "fp32", "auto: the CPU has no native bf16 (amx_bf16 or avx512_bf16)"
