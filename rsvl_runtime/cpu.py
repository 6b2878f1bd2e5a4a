"""CPU feature flags (Linux /proc/cpuinfo), for choosing the INT8 graph only where it is exact."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_vnni() -> bool:
    """AVX-512 VNNI or AVX-VNNI: integer dot products without u8*s8 saturation."""
    return bool({"avx512_vnni", "avx_vnni"} & cpu_flags())
