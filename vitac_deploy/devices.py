"""Named devices, one table: what is published of each (memory, memory bandwidth, dense rates), where
it comes from, and the GPU names that mean it (pure Python).

Every consumer reads the same entry: the memory model's budgets (`planning.memory.DEVICES`,
`vitac-deploy info --device-budget KEY`) its total, reserve and unified flag; the roofline
(`roofline.ROOFLINE_DEVICES`, `exporters.cost`, `planning.traffic`, `info --artifact`, `bench`) its
bandwidth and peaks. A figure that is not published for a device is None, and a consumer that needs
it refuses the device in one line naming the missing figure (`need`), never a guess.

Bandwidths and rates are vendors' datasheet or whitepaper numbers (`source` cites each; a figure
derived from a vendor number says so), not measurements: `scripts/gpu_check.sh` measures a lent
device's own ceilings. Memory totals are the modules' DRAM or what nvidia-smi reports (`note`); the
reserves are ASSUMPTIONS (carve-outs, the CUDA context, library workspaces, Python), to measure on
the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .errors import VitacError

__all__ = ["ALIASES", "DEVICES", "Device", "device", "device_for_gpu", "need", "with_figures"]

GiB = 2**30
MiB = 2**20
JETSON_RESERVE = 2 * GiB   # ASSUMPTION: carve-outs, headless OS, CUDA context, Python; measure on the target
DISCRETE_RESERVE = 1 * GiB  # ASSUMPTION: CUDA context and library workspaces on a discrete GPU

# What each optional figure is called in a refusal.
FIGURES = {
    "total": "memory size",
    "reserve": "memory reserve",
    "unified": "memory kind (unified or discrete)",
    "bandwidth_tb_s": "memory bandwidth",
    "fp16_dense_tflops": "dense fp16 rate",
    "fp32_tflops": "fp32 rate",
}


@dataclass(frozen=True)
class Device:
    """A named device and what is known of it (None: no published figure).

    Memory: `total` bytes, `reserve` bytes kept back (an assumption), `unified` when host and device
    share the DRAM (Jetson: pinned host buffers count against the same budget); `note` says where
    they come from. Ceilings: `bandwidth_tb_s` (10^12 bytes/s), `fp16_dense_tflops` (tensor-core
    fp16, dense, fp32 accumulation where the vendor splits it), `fp32_tflops` (plain fp32, CUDA
    cores: what an fp32 graph with TF32 off gets); `source` cites them. `match`: substrings of the
    GPU name (lower case) that mean this device. `key` and `aliases`: the names it is looked up by.
    `derived`: the figures computed from another vendor number (the source says how), not published.
    """

    name: str
    total: Optional[int] = None
    reserve: Optional[int] = None
    unified: Optional[bool] = None
    bandwidth_tb_s: Optional[float] = None
    fp16_dense_tflops: Optional[float] = None
    fp32_tflops: Optional[float] = None
    note: str = ""
    source: str = ""
    match: tuple[str, ...] = ()
    key: str = ""
    aliases: tuple[str, ...] = ()
    derived: tuple[str, ...] = ()

    @property
    def budget(self) -> Optional[int]:
        """`total` - `reserve`: the bytes a plan may take (None without a memory size)."""
        return None if self.total is None or self.reserve is None else self.total - self.reserve

    def peak_tflops(self, precision: str) -> Optional[float]:
        """The dense rate of `precision` (None where the device's figure for it is not known)."""
        return {"fp16": self.fp16_dense_tflops, "fp32": self.fp32_tflops}.get(precision)

    def ceilings(self) -> dict[str, Any]:
        """The roofline's figures as data (name, bandwidth, rates, source, GPU-name matchers)."""
        return {"name": self.name, "bandwidth_tb_s": self.bandwidth_tb_s, "fp16_dense_tflops": self.fp16_dense_tflops,
                "fp32_tflops": self.fp32_tflops, "source": self.source, "match": self.match, "derived": self.derived}


_TABLE = (
    # The order is the order of the roofline's tables, and the order GPU names are matched in
    # (the PCIe H100 before the SXM one, whose matcher "h100" also takes "H100 PCIe").
    Device(
        "H100 PCIe", bandwidth_tb_s=2.0, fp16_dense_tflops=756.5, fp32_tflops=51.2,
        source="NVIDIA H100 Tensor Core GPU datasheet (PCIe): 2 TB/s HBM2e, FP16 tensor 1,513 TFLOPS with sparsity "
               "(756.5 dense), FP32 51 TFLOPS",
        match=("h100 pcie", "h100-pcie"), key="h100-pcie"),
    Device(
        "H100 SXM 80 GB", total=81559 * MiB, reserve=DISCRETE_RESERVE, unified=False,
        bandwidth_tb_s=3.35, fp16_dense_tflops=989.4, fp32_tflops=66.9,
        note="81559 MiB as nvidia-smi reports an 80 GB H100; 989.4 TFLOP/s dense fp16 "
             "(1979 with 2:4 sparsity), NVIDIA's H100 SXM figure",
        source="NVIDIA H100 Tensor Core GPU datasheet (SXM5): 3.35 TB/s HBM3, FP16 tensor 1,979 TFLOPS with sparsity "
               "(989.4 dense), FP32 67 TFLOPS",
        match=("h100",), key="h100", aliases=("h100-80gb",)),
    Device(
        "H200 SXM", bandwidth_tb_s=4.8, fp16_dense_tflops=989.4, fp32_tflops=66.9,
        source="NVIDIA H200 Tensor Core GPU datasheet (SXM): 4.8 TB/s HBM3e, FP16 tensor 1,979 TFLOPS with sparsity "
               "(989.4 dense), FP32 67 TFLOPS: the H100's compute",
        match=("h200",), key="h200"),
    Device(
        "GeForce RTX 4090", bandwidth_tb_s=1.008, fp16_dense_tflops=165.2, fp32_tflops=82.6,
        source="NVIDIA Ada Lovelace GPU architecture whitepaper, RTX 4090: 1,008 GB/s GDDR6X, peak FP16 tensor "
               "165.2 TFLOPS dense with FP32 accumulate (330.3 with FP16 accumulate), FP32 82.6 TFLOPS",
        match=("4090",), key="rtx-4090"),
    Device("Jetson Orin Nano 8 GB", total=8 * GiB, reserve=JETSON_RESERVE, unified=True,
           note="8 GB LPDDR5 shared by CPU and GPU", key="orin-nano-8gb"),
    Device("Jetson Orin NX 16 GB", total=16 * GiB, reserve=JETSON_RESERVE, unified=True,
           note="16 GB LPDDR5 shared by CPU and GPU", key="orin-nx-16gb"),
    Device("Jetson AGX Orin 32 GB", total=32 * GiB, reserve=JETSON_RESERVE, unified=True,
           note="32 GB LPDDR5 shared by CPU and GPU", key="agx-orin-32gb"),
    Device(
        "Jetson AGX Orin 64 GB", total=64 * GiB, reserve=JETSON_RESERVE, unified=True,
        bandwidth_tb_s=0.2048, fp16_dense_tflops=42.5, fp32_tflops=5.3,
        note="64 GB LPDDR5 shared by CPU and GPU",
        source="NVIDIA Jetson AGX Orin Series technical brief: 204.8 GB/s LPDDR5; GPU 5.3 FP32 TFLOPS and 170 sparse "
               "INT8 TOPS (64 third-generation tensor cores). The fp16 figure is DERIVED: 85 dense INT8 TOPS, halved "
               "for fp16 on Ampere tensor cores",
        match=("orin",), key="agx-orin", aliases=("agx-orin-64gb",), derived=("fp16_dense_tflops",)),
    Device(
        "Jetson AGX Thor (T5000)", bandwidth_tb_s=0.273, fp16_dense_tflops=258.8, fp32_tflops=None,
        source="NVIDIA Jetson AGX Thor datasheet: 273 GB/s LPDDR5X, 2,070 FP4 TFLOPS (sparse). The fp16 figure is "
               "DERIVED: halved for dense, then halved per doubling of precision (FP8, FP16) on Blackwell tensor "
               "cores; no fp32 rate is published",
        match=("thor",), key="thor", derived=("fp16_dense_tflops",)),
)

DEVICES: dict[str, Device] = {d.key: d for d in _TABLE}
ALIASES: dict[str, str] = {alias: d.key for d in _TABLE for alias in d.aliases}   # alias -> key


def device(name: str) -> Device:
    """The device a key or an alias names, or one line naming them all."""
    try:
        return DEVICES[ALIASES.get(name, name)]
    except (KeyError, TypeError):
        known = [n for d in _TABLE for n in (d.key, *d.aliases)]
        raise VitacError(f"unknown device {name!r} (known: {', '.join(known)})") from None


def with_figures(*figures: str) -> dict[str, Device]:
    """The devices (by key, in the table's order) that have every one of `figures` (Device fields)."""
    for f in figures:
        if f not in FIGURES:
            raise ValueError(f"not an optional figure of Device: {f!r} (figures: {', '.join(FIGURES)})")
    return {k: d for k, d in DEVICES.items() if all(getattr(d, f) is not None for f in figures)}


def need(dev: Device, *figures: str, purpose: str = "") -> Device:
    """`dev` itself where it has every one of `figures`; else one line: which figure it lacks, for
    what, and the devices that have them."""
    missing = [f for f in figures if getattr(dev, f) is None]
    if missing:
        have = ", ".join("/".join((d.key, *d.aliases)) for d in with_figures(*figures).values()) or "none"
        why = f" for {purpose}" if purpose else ""
        raise VitacError(f"device {dev.key or dev.name!r} ({dev.name}) has no published "
                         f"{' or '.join(FIGURES[f] for f in missing)}{why} (devices with one: {have})")
    return dev


def device_for_gpu(gpu_name: Optional[str]) -> Optional[str]:
    """The key of a GPU by the name its driver reports ("NVIDIA H200" -> "h200"), or None."""
    if not gpu_name:
        return None
    low = gpu_name.lower()
    for key, dev in DEVICES.items():
        if any(m in low for m in dev.match):
            return key
    return None
