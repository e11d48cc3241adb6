"""The fast PyTorch path (backend `torch`; `torch-compile` is the same under torch.compile): the
reference model's weights run by a frame function built for speed, exact against the reference.

- KV cache: one preallocated buffer per block for keys and one for values, [max batch, heads,
  max frames x L, head_dim]. A frame's K/V are written in place into their slot and attention is
  SDPA over the cache view [:B, :, :(t+1)L]: no concatenation, no copy of the past.
- RoPE: the tables of every frame index live on the device, [max frames, L, 1, 1, head_dim];
  frame t reads row t, for queries and keys in one pass.
- Static shapes per (batch, frame index): every input and output of a frame is a preallocated
  buffer (conditioning, features, raw predictions, the normalized prediction), so torch.compile
  specializes one graph per frame index (`dynamic=False`) and a CUDA graph can be captured per
  frame key and replayed (`cuda_graphs=True`, cuda only).
- A staged context (`stage_context`) is normalized and embedded once, at batch 1, and broadcast
  (expand, no copy) into every context frame of every rollout until it is staged again.
- K/V that nothing reads are not written: a rollout's last frame, when nothing is cached before it
  (one-frame rollouts, e.g. the energy landscape), attends over its own K/V and leaves the cache
  alone. Where earlier frames are cached, SDPA over the cache view reads the new frame's K/V from
  its slot, so that write is read (merging two attentions by their log-sum-exp instead has no
  public PyTorch API).
- Host traffic per frame: the conditioning only (pinned, double-buffered staging on cuda, so the
  host never waits for the device to finish a frame); per rollout, the energies.

Compile modes are torch.compile's ("default", "reduce-overhead", "max-autotune",
"max-autotune-no-cudagraphs"); which one is fastest is measured on a GPU (scripts/gpu_plan_speed.py).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ...errors import BackendUnavailable, VitacError
from ...precision import precision as get_precision
from ...rope import all_frame_tables
from ..base import Runtime
from . import BACKEND
from ..staging import StagedFrames
from .backend import _import_torch, reference_from_artifact
from .features import device_tensor, raw_equivalent

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
GRAPHING_MODES = ("reduce-overhead", "max-autotune")   # torch.compile captures CUDA graphs itself


def compile_mode(compile: Union[None, bool, str]) -> Optional[str]:
    """None (eager) or a torch.compile mode; True means "default"."""
    if compile in (None, False):
        return None
    mode = "default" if compile is True else compile
    if mode not in COMPILE_MODES:
        raise VitacError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {compile!r}")
    return mode


def _frame_module(torch):
    """The module holding weights, tables, cache and I/O buffers, and the frame function (defined
    here so that the module imports without torch)."""
    import torch.nn.functional as F
    from torch import nn

    class FastPredictor(nn.Module):
        def __init__(self, model, dtype, device: str):
            super().__init__()
            self.model, self.cfg, self.dtype = model, model.cfg, dtype
            cos, sin = all_frame_tables(model.cfg)                  # [frames, L, hd], float64
            shape = (cos.shape[0], cos.shape[1], 1, 1, cos.shape[2])   # broadcast over [B, L, 2, H, hd]
            self.register_buffer("cos", torch.from_numpy(cos).to(device, dtype).reshape(shape), persistent=False)
            self.register_buffer("sin", torch.from_numpy(sin).to(device, dtype).reshape(shape), persistent=False)

        def normalize(self, x):
            return F.layer_norm(x, (x.shape[-1],), eps=self.cfg.feature_norm_eps) if self.cfg.normalize_reps else x

        def embed(self, raw):
            """Raw features (float32) -> the predictor's patch tokens, as the reference does."""
            return self.model.predictor_embed(self.normalize(raw).to(self.dtype))

        def frame(self, t: int, B: int, src: str, groups: Optional[tuple], write: bool, out: int) -> None:
            """Frame t of B rows on top of the t frames cached: features from `src` ("feat", "raw0",
            "raw1" or "ctx", the staged context by `groups`); raw prediction into raw{out}, the
            normalized one into `pred`; its K/V into the cache slot when `write`."""
            cfg, m = self.cfg, self.model
            L, K, N = cfg.tokens_per_step, cfg.cond_tokens, cfg.tokens_per_frame
            H, hd, d = cfg.num_heads, cfg.head_dim, cfg.predictor_embed_dim
            if src == "ctx":
                parts = [self.ctx_emb[r:r + 1, t].expand(hi - lo, N, d) for lo, hi, r in groups]
                emb = parts[0] if len(parts) == 1 else torch.cat(parts)
            else:
                emb = self.embed(getattr(self, src)[:B])
            cond = [m.action_encoder(self.action[:B].to(self.dtype)), m.state_encoder(self.state[:B].to(self.dtype))]
            if cfg.use_extrinsics:
                cond.append(m.extrinsics_encoder(self.extrinsics[:B].to(self.dtype)))
            x = torch.cat([torch.stack(cond, dim=1), emb], dim=1)             # [B, L, d]
            cos, sin = self.cos[t], self.sin[t]
            P = t * L
            for i, blk in enumerate(m.predictor_blocks):
                qkv = blk.attn.qkv(blk.norm1(x)).view(B, L, 3, H, hd)
                qk = qkv[:, :, :2]
                rot = torch.stack((-qk[..., 1::2], qk[..., 0::2]), dim=-1).flatten(-2)   # adjacent pairs
                qk = qk * cos + rot * sin
                q, k, v = qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
                kc, vc = getattr(self, f"k{i}"), getattr(self, f"v{i}")
                if write:
                    kc[:B, :, P:P + L].copy_(k)
                    vc[:B, :, P:P + L].copy_(v)
                if P:
                    k, v = kc[:B, :, :P + L], vc[:B, :, :P + L]
                o = F.scaled_dot_product_attention(q, k, v)
                x = x + blk.attn.proj(o.transpose(1, 2).reshape(B, L, d))
                x = x + blk.mlp(blk.norm2(x))
            z = m.predictor_proj(m.predictor_norm(x[:, K:]))
            raw = getattr(self, f"raw{out}")[:B]
            raw.copy_(z)
            self.pred[:B].copy_(self.normalize(raw))

    return FastPredictor


class FastTorchRuntime(Runtime):
    backend = "torch"
    memory_layout = BACKEND.memory_layout
    cache = "in-place"   # one buffer per block, each frame written into its slot; attention over the view

    def __init__(self, model, precision: str = "fp32", device: str = "cpu", max_batch: Optional[int] = None,
                 max_frames: Optional[int] = None, compile: Union[None, bool, str] = None, cuda_graphs: bool = False):
        torch = self._torch = _import_torch()
        super().__init__(model.cfg, precision, device, max_batch, max_frames)
        if device not in ("cpu", "cuda"):
            raise VitacError(f"device must be cpu or cuda, got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("torch has no CUDA device here")
        self.compile_mode = compile_mode(compile)
        if cuda_graphs and device != "cuda":
            raise VitacError("cuda_graphs needs device cuda")
        if cuda_graphs and self.compile_mode in GRAPHING_MODES:
            raise VitacError(f"torch.compile mode {self.compile_mode!r} captures CUDA graphs itself: "
                             f"use cuda_graphs with eager, 'default' or 'max-autotune-no-cudagraphs'")
        self.dtype = get_precision(precision).torch_dtype(torch)
        p = next(model.parameters())
        if p.dtype != self.dtype or p.device.type != device:
            model = copy.deepcopy(model)   # the caller's model stays as it was (e.g. the float32 reference)
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.fast = _frame_module(torch)(self.model, self.dtype, device)
        self._sent(self.fast.cos.nbytes + self.fast.sin.nbytes)   # the RoPE tables, once
        self.cuda_graphs = bool(cuda_graphs)
        self._graphs: dict[tuple, Any] = {}
        self._pool = None
        self._frame = self.fast.frame
        if self.compile_mode:
            import torch._dynamo as dynamo

            # one graph per frame key (frame index, batch, source): more than dynamo's default few
            limit = "recompile_limit" if hasattr(dynamo.config, "recompile_limit") else "cache_size_limit"
            setattr(dynamo.config, limit, max(getattr(dynamo.config, limit), 64))
            self._frame = torch.compile(self.fast.frame, mode=self.compile_mode, dynamic=False)
            self.backend = "torch-compile"
        self._context_shape: Optional[tuple] = None
        self._written = 0           # frames whose K/V are in the cache
        self._raw_cur = 0           # raw buffer holding the last raw prediction
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    @classmethod
    def from_artifact(cls, path: Path, manifest: dict[str, Any], precision: str, device: str,
                      max_batch: Optional[int], max_frames: Optional[int], **options) -> "FastTorchRuntime":
        """The reference model's weights read from the artifact's float32 graph, run fast."""
        return cls(reference_from_artifact(path, manifest), precision, device, max_batch, max_frames, **options)

    # -- buffers --------------------------------------------------------------------------------------
    def _buffer(self, name: str, shape, dtype=None) -> None:
        torch, f = self._torch, self.fast
        t = torch.zeros(shape, dtype=dtype or torch.float32, device=self.device)
        if name in f._buffers:
            f._buffers[name] = t
        else:
            f.register_buffer(name, t, persistent=False)
        if self.compile_mode and hasattr(torch._dynamo, "mark_static_address"):
            torch._dynamo.mark_static_address(t)   # CUDA graphs of compiled code may write it in place

    def _allocate(self, batch: int) -> None:
        torch, cfg = self._torch, self.cfg
        self._graphs.clear()   # captured graphs read the old buffers
        kv = (batch, cfg.num_heads, self.max_frames * cfg.tokens_per_step, cfg.head_dim)
        for i in range(cfg.depth):
            self._buffer(f"k{i}", kv, self.dtype)
            self._buffer(f"v{i}", kv, self.dtype)
        frame = (batch, cfg.tokens_per_frame, cfg.embed_dim)
        for name in ("raw0", "raw1", "pred"):
            self._buffer(name, frame)
        self._has_feat = False     # [batch, N, D] for host features: allocated when first needed
        widths = {"action": cfg.action_dim, "state": cfg.action_dim, "extrinsics": cfg.action_dim - 1}
        self._cond_names = ["action", "state"] + (["extrinsics"] if cfg.use_extrinsics else [])
        for name in self._cond_names:
            self._buffer(name, (batch, widths[name]))
        if self.device == "cuda":   # pinned, two slots: the host fills one while a copy may read the other
            self._pinned = {n: [torch.zeros((batch, widths[n]), pin_memory=True) for _ in range(2)]
                            for n in self._cond_names}
            self._pin_events = [torch.cuda.Event(), torch.cuda.Event()]
            self._pin_slot = 0
        self._written, self._raw_cur = 0, 0

    @property
    def cache_bytes(self) -> int:
        """Bytes of the preallocated cache (one buffer per layer for keys, one for values)."""
        f = self.fast
        return sum(getattr(f, n).nbytes for n in f._buffers if n[0] in "kv" and n[1:].isdigit()) \
            if hasattr(f, "k0") else 0

    def device_memory(self) -> Optional[dict[str, float]]:
        """Peak CUDA memory PyTorch allocated since the runtime opened, and this runtime's buffers (MiB)."""
        if self.device != "cuda":
            return None
        torch = self._torch
        return {"peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
                "cache_and_io_buffers_mib": sum(b.nbytes for b in self.fast._buffers.values()) / 2**20}

    # -- inputs ---------------------------------------------------------------------------------------
    def _put(self, name: str, array: np.ndarray) -> None:
        """A host array into the start of buffer `name` (counted)."""
        torch = self._torch
        dst = getattr(self.fast, name)[:array.shape[0]]
        if self.device == "cuda" and name in self._cond_names:
            pinned = self._pinned[name][self._pin_slot][:array.shape[0]]
            pinned.numpy()[...] = array
            dst.copy_(pinned, non_blocking=True)
        else:
            dst.copy_(_tensor(torch, array))
        self._sent(array.nbytes)

    def _put_cond(self, cond: dict[str, np.ndarray]) -> None:
        if self.device == "cuda":
            self._pin_events[self._pin_slot].synchronize()   # the copy that last read this slot is done
        for name in self._cond_names:
            self._put(name, cond[name])
        if self.device == "cuda":
            self._pin_events[self._pin_slot].record()
            self._pin_slot = 1 - self._pin_slot

    def _device_input(self, name: str, x):
        return device_tensor(self._torch, x, self.device, name)

    def _stage_host(self, context: np.ndarray) -> None:
        self._sent(context.nbytes)
        self._stage_tensor(_tensor(self._torch, context).to(self.device))

    def _stage_device(self, contexts: list, normalized: bool) -> bool:
        ctx = self._torch.cat(contexts)
        self._stage_tensor(raw_equivalent(self._torch, ctx, self.cfg.feature_norm_eps) if normalized else ctx)
        return True

    def _stage_tensor(self, ctx) -> None:
        """Normalize and embed the context once (batch 1 per context): [R, C, N, predictor width]."""
        with self._torch.no_grad():
            emb = self.fast.embed(ctx)
        f = self.fast
        if "ctx_emb" in f._buffers and f.ctx_emb.shape == emb.shape:
            f.ctx_emb.copy_(emb)   # in place: captured graphs keep reading it
        else:
            self._graphs.clear()
            if "ctx_emb" in f._buffers:
                f._buffers["ctx_emb"] = emb
            else:
                f.register_buffer("ctx_emb", emb, persistent=False)
        self._context_shape = tuple(ctx.shape)

    # -- one frame ------------------------------------------------------------------------------------
    def _run(self, features, cond: dict[str, np.ndarray]) -> None:
        torch, B, t = self._torch, self.batch, self.frames
        if t and self._written < t:
            raise VitacError("the cache does not hold the last rollout's final frame (nothing was to read it): "
                             "reset before appending")
        groups = None
        if features is None:
            src = f"raw{self._raw_cur}"
        elif isinstance(features, StagedFrames):
            src, groups = "ctx", features.groups
        else:
            if not self._has_feat:
                self._buffer("feat", (self._capacity, self.cfg.tokens_per_frame, self.cfg.embed_dim))
                self._has_feat = True
                self._graphs.clear()
            self._put("feat", features)
            src = "feat"
        self._put_cond(cond)
        last = self._rollout_frames is not None and t == self._rollout_frames - 1
        write = not (last and t == 0)   # nothing reads a lone last frame's K/V
        key = (t, B, src, groups, write, 1 - self._raw_cur)
        with torch.no_grad():
            if self.cuda_graphs:
                self._replay(key)
            else:
                self._frame(*key)
        self._written = t + 1 if write else t   # slot t now holds this frame, or nothing of this rollout
        self._raw_cur = 1 - self._raw_cur

    def _replay(self, key: tuple) -> None:
        """The frame's CUDA graph: captured on the first run of its key (after an eager run on a side
        stream that does this frame's work), replayed after."""
        torch = self._torch
        graph = self._graphs.get(key)
        if graph is None:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._frame(*key)           # this frame's result, and warm kernels for the capture
            torch.cuda.current_stream().wait_stream(side)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()   # one pool: graphs run one at a time
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                self._frame(*key)           # recorded, not run
            self._graphs[key] = graph
            return
        graph.replay()

    def _broadcast_cache(self, batch: int) -> None:
        P = self.frames * self.cfg.tokens_per_step
        f = self.fast
        for i in range(self.cfg.depth):
            for buf in (getattr(f, f"k{i}"), getattr(f, f"v{i}")):
                buf[1:batch, :, :P] = buf[:1, :, :P]

    def _prediction(self) -> np.ndarray:
        out = self.fast.pred[:self.batch].cpu().numpy().copy()
        self._received(out.nbytes)
        return out

    def _stage_goal(self, goal: np.ndarray) -> None:
        self._sent(goal.nbytes)
        self._goal = _tensor(self._torch, goal).to(self.device)

    def _stage_goal_device(self, goal) -> None:
        self._goal = goal.reshape(goal.shape[-2:])

    def _energy(self) -> np.ndarray:
        """On the device, float32 (predictions are kept float32 whatever the precision)."""
        with self._torch.no_grad():
            e = (self.fast.pred[:self.batch] - self._goal).abs().mean(dim=(1, 2))
        out = e.cpu().numpy().astype(np.float32)
        self._received(out.nbytes)
        return out

    @property
    def graphs_in_use(self) -> bool:
        return self.cuda_graphs or self.compile_mode in GRAPHING_MODES

    def _close(self) -> None:
        self._graphs.clear()
        for name in list(self.fast._buffers):
            if name not in ("cos", "sin"):
                del self.fast._buffers[name]
        self._capacity = 0

    def describe(self) -> str:
        extra = f", torch.compile {self.compile_mode}" if self.compile_mode else ""
        extra += ", CUDA graphs" if self.cuda_graphs else ""
        return f"{self.backend} ({self.device}, {self.precision}, in-place cache{extra})"


def _tensor(torch, array: np.ndarray):
    """A CPU tensor over a host array (copied only when numpy marks it read-only)."""
    a = np.ascontiguousarray(array)
    return torch.from_numpy(a if a.flags.writeable else a.copy())
