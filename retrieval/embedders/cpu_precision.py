"""Which precision `--precision auto` runs the exported CPU runtime in, and why.

The rule (issue 23): `auto` may be bf16 on CPUs with native bf16 (Intel AMX or AVX512_BF16) only
if, with a trained model, bf16 keeps >= 99% of fp32's text->image top-10 and min cosine >= 0.999.
Measured on an Intel Xeon with AMX (benchmarks/precision.py, RESULTS.md): min cosine 0.99975
(passes) but top-10 overlap 98.8% (misses), at 1.48x fp32's img/s for the small trained model
and 2.71x for ViT-B-32. So `auto` stays exact fp32 everywhere (config.AUTO_BF16_ON_NATIVE), and
on a CPU with native bf16 the recorded reason says that `--precision bf16` is there to take.

The CPU's flags are read from /proc/cpuinfo (no torch, no runtime import); where that file does
not exist (macOS, Windows) there are none. The decision is a pure function of the flags and the
policy, `resolve_cpu_precision`, so it is tested without the hardware.
"""

from __future__ import annotations

from collections.abc import Collection
from functools import cache
from pathlib import Path

from ..config import AUTO_BF16_ON_NATIVE

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
    requested: str,
    flags: Collection[str],
    engine: str = "openvino",
    *,
    bf16_on_native: bool = AUTO_BF16_ON_NATIVE,
) -> tuple[str, str]:
    """(precision, reason) for the exported runtime `engine` on a CPU with `flags`: `auto` is
    bf16 where the CPU has native bf16 and `bf16_on_native` allows it, else fp32 (always fp32
    for onnxruntime, which runs these graphs in fp32 only); any other request is kept."""
    if requested != "auto":
        return requested, f"--precision {requested}"
    if engine == "onnxruntime":
        return "fp32", "auto: onnxruntime runs fp32 on CPUs"
    native = [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    if not native:
        return "fp32", "auto: the CPU has no native bf16 (amx_bf16 or avx512_bf16)"
    if bf16_on_native:
        return "bf16", f"auto: the CPU has native bf16 ({', '.join(native)})"
    return "fp32", (
        f"auto: exact fp32; the CPU has native bf16 ({', '.join(native)}), so --precision bf16 "
        "runs faster at min cosine 0.9997 but keeps 98.8% of the top 10 (under the 99% bar)"
    )
