"""The backend registry and the precision model: a backend is one folder plus one registry line,
a precision one entry; what is not registered is refused by name, never run as something else."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

from vitac_deploy.errors import VitacError
from vitac_deploy.exporters import ExportOptions, export_artifact
from vitac_deploy.planning.memory import plan_memory
from vitac_deploy.precision import PRECISIONS, precision, resolve
from vitac_deploy.reference import random_predictor
from vitac_deploy.runtimes import open_runtime, registry

from tests.conftest import SMALL


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    d = tmp_path_factory.mktemp("reg") / "a"
    export_artifact(random_predictor(SMALL, 3), d, ExportOptions(precisions=["fp32"], validate=False))
    return d


def test_every_backend_declares_what_the_callers_read():
    found = registry.backends()
    assert list(found) == list(registry.PACKAGES)
    for b in found.values():
        assert b.opens and set(b.opens) <= {registry.PREDICTOR, registry.ENCODER, registry.ENGINE,
                                            registry.ENCODER_ENGINE}
        assert set(b.devices) <= {"cpu", "cuda"} and b.devices
        assert set(b.cache_contracts) <= {"concat", "static"}
        assert b.precisions, b   # the precision model names who runs each precision
        if b.memory_layout is not None:
            assert b.memory_layout.default_weight_copies in b.memory_layout.weight_copies
    assert registry.get("torch-compile") == (found["torch"], {"compile": "default"})
    assert registry.get("torch-reference") == (found["torch"], {"reference": True})
    with pytest.raises(VitacError, match="unknown backend 'jax'.*onnxruntime, torch, torch-compile, torch-reference, tensorrt"):
        registry.get("jax")


def test_a_new_backend_is_one_folder_and_one_line(artifact, monkeypatch):
    """A backend the registry did not know, declared in its own package and added to PACKAGES,
    is opened by open_runtime by name, chosen by "auto" where it comes first, and priced by the
    memory model from its declared layout; nothing else changes."""
    from vitac_deploy.runtimes.onnxruntime import BACKEND as ORT

    class EchoBackend(registry.Backend):
        name = "echo"
        library = "numpy"
        opens = (registry.PREDICTOR,)
        devices = ("cpu",)
        memory_layout = registry.MemoryLayout(frame_buffers=7, pinned_staging=False, weight_copies=(1,),
                                              default_weight_copies=1)

        def open_predictor(self, path, manifest, precision, device, max_batch, max_frames, verify, **options):
            rt = ORT.open_predictor(path, manifest, precision, device, max_batch, max_frames, verify, **options)
            rt.opened_by = self.name
            return rt

    module = types.ModuleType("vitac_deploy.runtimes.echo")
    module.BACKEND = EchoBackend()
    monkeypatch.setitem(sys.modules, "vitac_deploy.runtimes.echo", module)
    monkeypatch.setattr(registry, "PACKAGES", ("echo",) + registry.PACKAGES)
    monkeypatch.setitem(PRECISIONS, "fp32", PRECISIONS["fp32"].__class__(
        **{**PRECISIONS["fp32"].__dict__, "backends": PRECISIONS["fp32"].backends + ("echo",)}))

    rt = open_runtime(artifact, backend="echo")
    assert rt.opened_by == "echo"
    assert open_runtime(artifact).opened_by == "echo"   # auto: the first registered that runs here
    ctx = np.zeros((1, 1, SMALL.tokens_per_frame, SMALL.embed_dim), np.float32)
    acts = np.zeros((1, 2, SMALL.action_dim), np.float32)
    assert rt.rollout(ctx, acts, acts, 2).shape == (1, 2, SMALL.tokens_per_frame, SMALL.embed_dim)
    frame = SMALL.tokens_per_frame * SMALL.embed_dim * 4
    echo = plan_memory(SMALL, 1, 2, precision="fp32", backend="echo")
    ort = plan_memory(SMALL, 1, 2, precision="fp32", backend="onnxruntime")
    assert echo.frame_buffers - ort.frame_buffers == (7 - 4) * frame
    with pytest.raises(VitacError, match="the echo backend runs on cpu, not 'cuda'|runs on cpu"):
        registry.get("echo")[0].check("cuda", "fp32")


def test_an_unknown_precision_is_refused_by_name_everywhere(artifact, tmp_path):
    with pytest.raises(VitacError, match="precision must be one of fp32, fp16, got 'int8'"):
        precision("int8")
    with pytest.raises(VitacError, match="precision must be one of fp32, fp16, got 'int8'"):
        open_runtime(artifact, precision="int8")
    with pytest.raises(VitacError, match="--precision takes a comma list of fp32, fp16"):
        export_artifact(random_predictor(SMALL, 0), tmp_path / "x", ExportOptions(precisions=["int8"]))
    with pytest.raises(VitacError, match="got 'int8'"):
        plan_memory(SMALL, 1, 2, precision="int8")
    assert not (tmp_path / "x").exists()
    assert resolve(None, "cuda").name == "fp16" and resolve(None, "cpu").name == "fp32"
    assert precision("fp16").file_suffix == ".fp16" and precision("fp32").file_suffix == ""
    assert precision("fp16").bytes == 2 and precision("fp32").tolerance.max_abs == 1e-4


def test_a_backend_without_a_memory_model_is_named(monkeypatch):
    monkeypatch.setattr(registry.backends()["torch"].__class__, "memory_layout", None)
    with pytest.raises(VitacError, match="the torch backend has no memory model \\(backends with one: "
                                         "onnxruntime, tensorrt\\)"):
        plan_memory(SMALL, 1, 2, backend="torch")


def test_registry_imports_with_the_standard_library_alone():
    """Listing backends imports none of their libraries (a Jetson may lack torch or onnxruntime)."""
    code = ("import sys; from vitac_deploy.runtimes import registry; print(sorted(registry.backends())); "
            "print([m for m in ('torch', 'onnxruntime', 'tensorrt', 'tensorrt_rtx', 'onnx') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "['onnxruntime', 'tensorrt', 'torch']" and out[1] == "[]", out


def test_renamed_flags_keep_their_old_names_hidden():
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "vitac_deploy", *args], capture_output=True, text=True)

    new = cli("info", "--preset", "vitac-l384", "--samples", "8", "--horizon", "3")
    old = cli("info", "--preset", "vitac-l384", "--plan-samples", "8", "--plan-horizon", "3")
    assert new.returncode == old.returncode == 0, old.stderr
    assert "CEM plan: 8 samples, horizon 3" in new.stdout and new.stdout == old.stdout
    both = cli("info", "--samples", "8", "--plan-samples", "9")
    assert both.returncode == 2 and "give --samples (--plan-samples is its old name), not both" in both.stderr
    # the new flag given at its default value is given all the same: refused, not silently overridden
    at_default = cli("serve", "ART", "--horizon", "2", "--rollout", "3")
    assert at_default.returncode == 2, at_default.stderr
    assert "give --horizon (--rollout is its old name), not both" in at_default.stderr
    assert len(at_default.stderr.strip().splitlines()) == 1, at_default.stderr
    for command, old_flag, new_flag in (("info", "--plan-samples", "--samples"), ("serve", "--rollout", "--horizon"),
                                        ("demo", "--plan-steps", "--cem-steps")):
        text = cli(command, "--help").stdout
        assert new_flag in text and old_flag not in text, (command, text)
