"""What this CPU can do, as far as the int8 kernels care.

ONNX Runtime picks its integer matrix kernels by instruction set: u8 x s8 is exact with VNNI
(AVX-512 VNNI, AVX-VNNI) and saturates 16-bit sums without it (AVX2's vpmaddubsw); ARM64 uses its
dot-product instructions. A model quantized and checked on one CPU is therefore only known to be
right on CPUs with the same features, so the features are part of its cache key and its record.
"""

from __future__ import annotations

import hashlib
import platform
from functools import cache
from pathlib import Path

KERNEL_FLAGS = (
    # x86
    "sse4_1", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
    "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16",
    # ARM64 (/proc/cpuinfo "Features")
    "asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2",
)  # fmt: skip
"""The flags that change which kernel ONNX Runtime (MLAS) runs; the others do not matter here."""


@cache
def _cpuinfo() -> tuple[set[str], str]:
    """Flags and model name from /proc/cpuinfo (Linux); elsewhere no flags and the processor name."""
    flags: set[str] = set()
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return flags, platform.processor()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags.update(value.split())
        elif key in ("model name", "cpu part") and not model:
            model = value.strip()
    return flags, model


def cpu_features() -> tuple[str, ...]:
    """The machine's architecture and its kernel-relevant flags; where no flags can be read
    (macOS, Windows) the architecture and processor name stand for them."""
    flags, model = _cpuinfo()
    found = tuple(f for f in KERNEL_FLAGS if f in flags)
    return (platform.machine().lower(), *found) if found or not model else (platform.machine().lower(), model)


def cpu_key() -> str:
    """A short name for the feature set, with the ONNX Runtime version (its kernels change too)."""
    try:
        import onnxruntime

        version = onnxruntime.__version__
    except ImportError:
        version = "none"
    return hashlib.sha1(" ".join([*cpu_features(), f"ort-{version}"]).encode()).hexdigest()[:10]


def cpu_model() -> str:
    """The CPU's model name, for benchmark records."""
    return _cpuinfo()[1] or platform.machine()
