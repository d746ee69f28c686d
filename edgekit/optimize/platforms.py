"""A build per device class: which recipes each CPU family prefers, and where each build goes.

Measured here and in onnxruntime's guidance (see ``../shared`` quantization notes and
docs/quantization.md): on x86 without VNNI, U8S8 is the only int8 format faster than FP32, and
7-bit weights (reduce_range) avoid int16 saturation in conv nets; x86 with VNNI (AVX512-VNNI,
AVX-VNNI) runs U8S8 and S8S8 without saturation, so reduce_range only costs accuracy; arm64 runs
S8S8 fastest (its int8 dot-product instructions are signed) and needs no reduce_range.

Pure, but for ``host_cpu_flags`` (reads /proc/cpuinfo).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgekit.errors import ConfigError

__all__ = ["Family", "build_path", "family_for", "host_cpu_flags", "parse_target_platforms"]

Activation = Literal["uint8", "int8"]
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "avx512vnni", "avxvnni"})


@dataclass(frozen=True)
class Family:
    """A CPU family's quantization preferences, the preferred recipe first."""

    name: str
    activation_types: tuple[Activation, ...]
    reduce_range: bool | None  # None: try both (conv nets)
    why: str


X86 = Family("x86 without VNNI", ("uint8",), None,
             "U8S8 (S8S8 is slower than FP32 without VNNI); reduce-range tried on conv nets")
X86_VNNI = Family("x86 with VNNI", ("uint8", "int8"), False, "U8S8 then S8S8, no reduce-range (VNNI does not saturate)")
ARM64 = Family("arm64", ("int8",), False, "S8S8 (signed int8 dot products), no reduce-range")


def parse_target_platforms(text: str) -> tuple[str, ...]:
    """``linux/amd64,linux/arm64`` -> the platforms, in order, each once."""
    platforms = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if not platforms:
        raise ConfigError("name at least one platform, e.g. linux/amd64,linux/arm64", field="--platform")
    for plat in platforms:
        if plat.count("/") != 1 or not all(plat.split("/")):
            raise ConfigError(f"{plat!r} is not os/arch", field="--platform")
    return platforms


def family_for(platform: str, *, host_platform: str, host_flags: frozenset[str]) -> Family:
    """The family of ``platform``'s CPUs. Only the host's own CPU is known to have VNNI or not;
    another amd64 device is taken to have none (the recipe that is fast everywhere)."""
    arch = platform.split("/", 1)[1]
    if arch == "amd64":
        return X86_VNNI if platform == host_platform and host_flags & _VNNI_FLAGS else X86
    if arch == "arm64":
        return ARM64
    raise ConfigError(f"no quantization recipes for {platform}: linux/amd64 and linux/arm64 are known",
                      field="--platform")


def build_path(out: Path, platform: str) -> Path:
    """``out.onnx`` -> ``out.linux-arm64.onnx``: the build for ``platform``, which ``package
    --platform linux/arm64=FILE`` takes."""
    tag = platform.replace("/", "-")
    return out.with_name(f"{out.stem}.{tag}{out.suffix or '.onnx'}")


def host_cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (Linux); empty when they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()
