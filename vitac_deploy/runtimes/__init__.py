"""Runtimes: roll the world model forward on a KV cache, and encode camera frames.

`open_runtime` (predictor) and `open_encoder` (camera frames -> features) open what export and
build-engine wrote, with the backend the registry names (`registry.py`: each backend folder
declares what it can do). Imports with numpy alone; each backend imports its own library
(onnxruntime, torch, tensorrt) only when it opens something.
"""

from __future__ import annotations

from .base import Runtime
from .encoder_base import EncoderRuntime
from .openers import config_of, open_encoder, open_models, open_runtime
from .registry import Backend, MemoryLayout, available_backends, backends
from .staging import HostTraffic, StagedContext

__all__ = ["Runtime", "EncoderRuntime", "open_runtime", "open_encoder", "open_models", "config_of",
           "available_backends", "backends", "Backend", "MemoryLayout", "StagedContext", "HostTraffic"]
