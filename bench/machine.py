"""Which CPU a benchmark ran on, and whether it has the bf16 instructions that decide which kernels torch runs."""

import platform
from pathlib import Path

import torch

from paligemma.model.precision import native_bf16_cpu

BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")


def cpuinfo_lines() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.read_text().splitlines() if cpuinfo.exists() else []


def cpu_name() -> str:
    names = [line.split(":", 1)[1].strip() for line in cpuinfo_lines() if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    return {flag for line in cpuinfo_lines() if line.startswith("flags") for flag in line.split()}


def page_kind() -> str:
    """The kind of CPU a benchmark page is for, by the kernels torch runs on it: "AVX2", "AVX512" (no bf16
    instructions), "AVX512-BF16" (bf16 dot products, e.g. AMD EPYC Zen 4) or "AVX512-AMX" (bf16 tiles: Intel Xeon
    Sapphire Rapids and later)."""
    capability, flags = torch.backends.cpu.get_cpu_capability(), cpu_flags()
    if capability != "AVX512":
        return capability
    if "amx_bf16" in flags:
        return "AVX512-AMX"
    return "AVX512-BF16" if "avx512_bf16" in flags else "AVX512"


def cpu_kind() -> str:
    """torch's CPU capability, the bf16 flags /proc/cpuinfo lists, and whether torch computes bf16 natively."""
    flags = cpu_flags()
    listed = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in BF16_FLAGS)
    native = "yes" if native_bf16_cpu() else "no"
    return f"{torch.backends.cpu.get_cpu_capability()}; /proc/cpuinfo: {listed}; native bf16: {native}"
