"""Execution contexts that share one activation buffer, across TensorRT's API generations.

Why several contexts: a CUDA graph captured from an execution context stays valid only while that
context's shapes and addresses stay as they were (TensorRT's guidance: re-capture when shapes
change, or keep one context per captured graph). Every frame index has other shapes, so with CUDA
graphs each (batch, frame, buffer parity) gets a context of its own, configured once. They run one
after another on one stream, so they can share one activation buffer that the runtime allocates:
contexts are created without device memory of their own.

- TensorRT >= 10: `create_execution_context(ExecutionContextAllocationStrategy.USER_MANAGED)`, then
  `set_device_memory(ptr, size)` (10.1+) or the `device_memory` property.
- TensorRT 8.x: `create_execution_context_without_device_memory()` + `device_memory`.
- TensorRT for RTX: a runtime config carries the allocation strategy and the CUDA-graph strategy;
  it is kept alive as long as its context.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ...errors import VitacError


def activation_bytes(engine) -> int:
    """Activation memory a context of `engine` needs, for any shape of its profiles."""
    size = getattr(engine, "device_memory_size_v2", None)
    return int(size if size is not None else engine.device_memory_size)


class ContextFactory:
    """Creates contexts of any engine of a runtime, each bound to the shared activation buffer."""

    def __init__(self, trt, flavour: str, activation_ptr: Callable[[], int], activation_size: Callable[[], int],
                 rtx_graphs: bool = False):
        self._trt, self._flavour = trt, flavour
        self._ptr, self._size = activation_ptr, activation_size
        self._rtx_graphs = rtx_graphs
        self._keep: list[Any] = []        # RTX runtime configs: alive as long as their contexts

    def create(self, engine) -> Any:
        trt = self._trt
        strategies = getattr(trt, "ExecutionContextAllocationStrategy", None)
        if self._flavour == "tensorrt-rtx":
            rc = engine.create_runtime_config()
            rc.set_execution_context_allocation_strategy(strategies.USER_MANAGED)
            # whole-graph capture re-captures whenever a bound address changes, and our cache
            # buffers alternate every frame: off unless asked for (measure with `bench`)
            rc.cuda_graph_strategy = (trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE if self._rtx_graphs
                                      else trt.CudaGraphStrategy.DISABLED)
            ctx = engine.create_execution_context(rc)
            self._keep.append(rc)
        elif strategies is not None:
            ctx = engine.create_execution_context(strategies.USER_MANAGED)
        else:
            ctx = engine.create_execution_context_without_device_memory()
        if ctx is None:
            raise VitacError("TensorRT could not create an execution context (out of device memory?)")
        self.attach(ctx)
        return ctx

    def attach(self, ctx) -> None:
        """Give `ctx` the shared activation buffer (again, after it was reallocated)."""
        if hasattr(ctx, "set_device_memory"):
            ctx.set_device_memory(self._ptr(), self._size())
        else:
            ctx.device_memory = self._ptr()

    def release(self) -> None:
        self._keep.clear()


def configure(ctx, shapes: dict[str, tuple], addresses: dict[str, int], where: Optional[str] = None) -> None:
    """Set every input shape and tensor address of `ctx`; one line naming the tensor on refusal."""
    for name, shape in shapes.items():
        if not ctx.set_input_shape(name, shape):
            raise VitacError(f"TensorRT refused shape {list(shape)} for {name}"
                             f"{' (' + where + ')' if where else ''}: outside the engine's profile? "
                             f"(rebuild with larger --max-batch / --max-frames)")
    for name, ptr in addresses.items():
        if not ctx.set_tensor_address(name, ptr):
            raise VitacError(f"TensorRT refused the address of {name}: the engine has no such tensor "
                             f"(engine and manifest disagree: rebuild with `vitac-deploy build-engine`)")
