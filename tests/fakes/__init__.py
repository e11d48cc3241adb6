"""Fakes of the CUDA runtime API (cuda-python) and of the TensorRT Python API, for testing the
TensorRT runtime and its CUDA layer on machines without a GPU.

- `FakeCudart` (cudart.py) is used like `cuda.bindings.runtime`: same function names, parameter
  names and `(err, *values)` returns; "device" memory is host memory checked against live
  allocations; streams are lazy queues (work runs only when something forces it, and never because
  an unrelated stream was flushed), events order streams, captures record ops that graph launches
  replay with their capture-time arguments.
- `FakeTensorRT` (tensorrt.py) is used like the `tensorrt` / `tensorrt_rtx` module; an engine file is
  a JSON "fake plan" (`write_fake_engine`) naming an ONNX graph, which a context runs with
  onnxruntime on the CPU, reading and writing the fake device memory on a fake stream.

Inject them by replacing the imports, e.g.
    monkeypatch.setattr(vitac_deploy.runtimes.gpu, "import_cudart", lambda: cudart)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)    # importlib.import_module returns it
(and patch the names wherever a module imported them with `from ... import`).

What they prove: OUR logic — call order, stream/event ordering, capture and replay bookkeeping,
buffer sizes and bounds, lifetimes, error handling, and that the numbers the ONNX graph computes
reach the right buffers. What they never prove: TensorRT's or CUDA's own behaviour (kernels,
precision, performance, what a real driver accepts or does in cases the fakes model strictly or
not at all). Every check a fake makes is documented where it is made; a GPU run stays the judge.
"""

from .cudart import FakeCudaError, FakeCudart, cudaError_t
from .tensorrt import FakeTensorRT, write_fake_engine

__all__ = ["FakeCudaError", "FakeCudart", "FakeTensorRT", "cudaError_t", "write_fake_engine"]
