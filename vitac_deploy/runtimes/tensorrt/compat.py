"""Will this engine run here? Checked from its manifest before TensorRT touches the plan."""

from __future__ import annotations

from typing import Any, Optional

from ...errors import VitacError


def _major_minor(version: str) -> tuple[int, int]:
    parts = (version.split(".") + ["0"])[:2]
    return int(parts[0]), int(parts[1])


KV_CACHE_TENSORRT = "10.15"   # TensorScatter -> IKVCacheUpdateLayer (written in place) arrived in TensorRT 10.15


def check_kv_cache_support(trt, flavour: str, contract: str) -> None:
    """The static cache contract needs TensorRT's KV-cache update layer: refuse it, in one line naming
    the version, where this TensorRT has none (8.6 and 10.3 of JetPack 6 keep the concat contract)."""
    if contract != "static" or hasattr(trt, "IKVCacheUpdateLayer"):
        return
    need = (f"TensorRT >= {KV_CACHE_TENSORRT}" if flavour == "tensorrt"
            else "a TensorRT for RTX with IKVCacheUpdateLayer (1.7 has it)")
    raise VitacError(f"{trt.__name__} {trt.__version__} cannot run the static (in-place) KV cache contract: it "
                     f"needs {need} (TensorScatter -> IKVCacheUpdateLayer); re-export with "
                     f"`vitac-deploy export --cache concat`")


def check_graph_form_support(trt, flavour: str, form: str) -> None:
    """Refuse, before parsing, a graph form this TensorRT cannot parse: ort-fused holds ONNX Runtime's
    contrib operators (no TensorRT parses them); trt-attention needs the ONNX Attention operator's
    IAttention (TensorRT >= 10.15, TensorRT for RTX 1.7)."""
    from ...graph_forms import ATTENTION_TENSORRT, ORT_FUSED, TRT_ATTENTION

    redo = "re-export with `vitac-deploy export --graph-form portable`"
    if form == ORT_FUSED:
        raise VitacError(f"this artifact's step graphs are the ort-fused form (ONNX Runtime's contrib operators: "
                         f"MultiHeadAttention with the KV cache as outputs, SkipLayerNormalization, BiasGelu; "
                         f"TensorRT's parser does not import them): {redo} (or trt-attention for TensorRT >= "
                         f"{ATTENTION_TENSORRT})")
    if form == TRT_ATTENTION and not hasattr(trt, "IAttention"):
        need = f"TensorRT >= {ATTENTION_TENSORRT}" if flavour == "tensorrt" else "a TensorRT for RTX with IAttention"
        raise VitacError(f"{trt.__name__} {trt.__version__} cannot build the trt-attention graphs: the ONNX "
                         f"Attention operator needs {need} (IAttention); {redo}")


def check_engine_compat(manifest: dict[str, Any], trt_version: str, trt_flavour: str,
                        gpu_name: Optional[str], compute_capability: Optional[str]) -> None:
    """Refuse, with a message that says where the engine was built and what to do, an engine that
    this TensorRT or GPU cannot run (a plan is tied to its TensorRT version and GPU unless built
    version/hardware compatible)."""
    built = manifest.get("tensorrt", {})
    gpu = manifest.get("gpu") or {}
    on = (f"{gpu.get('name', '?')} (compute capability {gpu.get('compute_capability', '?')})" if gpu
          else "a machine without a GPU (ahead of time)")
    where = f"built with {built.get('flavour', 'tensorrt')} {built.get('version', '?')} on {on}"
    fix = "rebuild it here with `vitac-deploy build-engine`"
    if built.get("flavour", "tensorrt") != trt_flavour:
        raise VitacError(f"this engine was {where}, but this runtime has {trt_flavour} {trt_version}: {fix}")
    b_ver, r_ver = built.get("version", "0.0"), trt_version
    same = b_ver == r_ver
    if not same:
        vc = manifest.get("build_flags", {}).get("version_compatible", False)
        if not (vc and _major_minor(r_ver) >= _major_minor(b_ver) and _major_minor(r_ver)[0] == _major_minor(b_ver)[0]):
            raise VitacError(f"this engine was {where}; this machine has TensorRT {r_ver}: engines run only on the "
                             f"TensorRT version that built them (unless built --version-compatible): {fix}")
    if compute_capability is None:
        raise VitacError(f"this engine was {where}, and no CUDA GPU is visible here: TensorRT engines run on "
                         f"an NVIDIA GPU (with its driver, and cuda-python to reach it)")
    targets = manifest.get("compute_capabilities")
    if targets:  # TensorRT for RTX: built for a list of architectures (on any machine, GPU or not)
        if targets != ["default"] and compute_capability not in targets:
            raise VitacError(f"this engine was {where} for compute capability {', '.join(targets)}; this GPU is "
                             f"{gpu_name} ({compute_capability}): {fix} (or with --compute-capability "
                             f"{compute_capability})")
        if targets == ["default"] and float(compute_capability) < 8.0:
            raise VitacError(f"this engine was {where} for Ampere and newer; this GPU is {gpu_name} "
                             f"({compute_capability}): rebuild with --compute-capability {compute_capability}")
        return
    b_cc = gpu.get("compute_capability")
    if b_cc and b_cc != compute_capability:
        hc = manifest.get("build_flags", {}).get("hardware_compatible", False)
        if not (hc and float(compute_capability) >= 8.0 and float(b_cc) >= 8.0):
            raise VitacError(f"this engine was {where}; this GPU is {gpu_name} (compute capability "
                             f"{compute_capability}): engines are specific to the GPU architecture "
                             f"(unless built --hardware-compatible, Ampere and newer): {fix}")
