"""Step-graph forms: one computation and one IO contract, written in the operators a runtime fuses.

Every form takes and returns exactly the tensors of `contract.step_io` (so a runtime binds them the
same way) and is validated against the PyTorch reference at export. What differs is how attention,
RoPE, LayerNorm and the MLP are spelled, because each runtime fuses different spellings:

- ``portable`` (the default; what every vitac-deploy before graph forms wrote): attention as
  ``MatMul -> Softmax -> MatMul``, RoPE's pair swap as a ``[head_dim, head_dim]`` +-1 matrix, every
  float16 LayerNorm between two Casts, GELU spelled out below opset 20. Any ONNX Runtime and any
  TensorRT from 8.5 parse it; TensorRT 8.6 and 10.3 (JetPack 5 and 6) need it.
- ``ort-fused``: for ONNX Runtime (CUDA above all). Attention with the KV cache is one
  ``com.microsoft.MultiHeadAttention`` (past/present; flash attention on sm80/sm90 in float16 where
  head_dim % 8 == 0 and there is no mask); RoPE elementwise (a Gather that swaps adjacent pairs, the
  sign folded into the sine, never a MatMul); LayerNorm on the float16 residual without Casts
  (ONNX Runtime keeps LayerNorm statistics in float32: `LayerNormalization` always, and
  `SkipLayerNormalization` in the CUDA provider's strict mode, which the runtime turns on); the
  residual Add, the LayerNorm and the previous linear layer's bias in one `SkipLayerNormalization`;
  bias and GELU in one `BiasGelu` (exact erf GELU). Concat cache contract only.
- ``trt-attention``: for TensorRT >= 10.15 and 11.x (and TensorRT for RTX): the ONNX opset-23
  ``Attention`` operator (one output; TensorRT's parser turns it into an ``IAttention``), fed by the
  cache's ``Concat`` (concat contract) or ``TensorScatter`` (static contract, opset 24, which the
  parser turns into ``IKVCacheUpdateLayer``), RoPE elementwise; LayerNorm keeps its Casts (TensorRT
  documents no float32 statistics for a float16 normalization layer).

Older artifacts record no form: they are ``portable``. Numpy-free: runtimes and the CLI import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .errors import VitacError

PORTABLE, ORT_FUSED, TRT_ATTENTION = "portable", "ort-fused", "trt-attention"
GRAPH_FORMS = (PORTABLE, ORT_FUSED, TRT_ATTENTION)
ATTENTION_TENSORRT = "10.15"   # IAttention (the ONNX Attention operator) arrived in TensorRT 10.15


@dataclass(frozen=True)
class GraphForm:
    """What a form is for and what it needs (which backends run it, each backend declares:
    `runtimes.registry.Backend.graph_forms`)."""

    name: str
    caches: tuple[str, ...]            # cache contracts it can be written with
    opsets: tuple[int, int]            # opsets it can be written with (inclusive)
    default_opset: dict[str, int]      # per cache contract
    summary: str

    def opset(self, cache: str, requested: Optional[int] = None) -> int:
        """The opset the graphs of this form are written with."""
        return self.default_opset[cache] if requested is None else requested


FORMS: dict[str, GraphForm] = {
    PORTABLE: GraphForm(PORTABLE, ("concat", "static"), (13, 24),
                        {"concat": 17, "static": 24},
                        "MatMul-Softmax-MatMul attention, RoPE pair swap as a +-1 matrix, Casts around "
                        "float16 LayerNorm: any ONNX Runtime, TensorRT 8.5+ (JetPack 5 and 6)"),
    ORT_FUSED: GraphForm(ORT_FUSED, ("concat",), (17, 21), {"concat": 17},
                         "com.microsoft MultiHeadAttention with past/present, SkipLayerNormalization, BiasGelu, "
                         "elementwise RoPE, no Casts around float16 LayerNorm: ONNX Runtime"),
    TRT_ATTENTION: GraphForm(TRT_ATTENTION, ("concat", "static"), (23, 24),
                             {"concat": 23, "static": 24},
                             "ONNX Attention (opset 23) after the cache Concat or TensorScatter, elementwise "
                             f"RoPE: TensorRT >= {ATTENTION_TENSORRT} and 11.x, TensorRT for RTX, ONNX Runtime"),
}


def check_graph_form(name: Any) -> str:
    """`name` if it is a graph form, else a one-line VitacError naming the forms."""
    if name not in FORMS:
        raise VitacError(f"graph form must be one of {', '.join(GRAPH_FORMS)}, got {name!r}")
    return name


def graph_form(manifest: Mapping[str, Any], path: Any = "this manifest") -> str:
    """The graph form a manifest (artifact or engine) records: "portable" when it records none
    (written before graph forms existed); an unknown one is refused."""
    form = manifest.get("graph_form", PORTABLE)
    if form not in FORMS:
        raise VitacError(f"{path} records an unknown graph form {form!r} ({', '.join(GRAPH_FORMS)}): upgrade "
                         f"vitac-deploy or re-export")
    return form
