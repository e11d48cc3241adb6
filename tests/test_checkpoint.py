"""Loading checkpoints: every upstream layout, safe unpickling, clear mismatches."""

import pytest
import torch

from vitac_deploy import PredictorConfig, VitacError, load_predictor
from vitac_deploy.reference import random_predictor, save_checkpoint


@pytest.fixture(scope="module")
def model():
    from tests.conftest import SMALL

    return random_predictor(SMALL, 3)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("layout", ["bare", "predictor", "state_dict", "module", "backbone", "nested_module",
                                    "training_ckpt"])
def test_upstream_layouts(tmp_path, model, layout):
    sd = model.state_dict()
    wrap = {
        "bare": sd,
        "predictor": {"predictor": sd, "epoch": 3},
        "state_dict": {"state_dict": sd},
        "module": {f"module.{k}": v for k, v in sd.items()},
        "backbone": {f"backbone.{k}": v for k, v in sd.items()},
        "nested_module": {"predictor": {f"module.backbone.{k}": v for k, v in sd.items()}},
        "training_ckpt": {"encoder": {"x.weight": torch.zeros(2)}, "predictor": {f"module.{k}": v for k, v in sd.items()},
                          "opt": {"lr": 0.1}},
    }[layout]
    p = tmp_path / "ckpt.pt"
    torch.save(wrap, p)
    assert _same(load_predictor(p, model.cfg), model)


def test_safetensors_round_trip(tmp_path, model):
    p = tmp_path / "w.safetensors"
    save_checkpoint(model, p)
    loaded = load_predictor(p, model.cfg)
    assert _same(loaded, model) and not loaded.training


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused(tmp_path, model):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    p = tmp_path / "evil.pt"
    torch.save({"predictor": model.state_dict(), "payload": evil}, p)
    with pytest.raises(VitacError, match="refusing to load"):
        load_predictor(p, model.cfg)
    assert not marker.exists()


def test_mismatch_lists_keys_and_fitting_config(tmp_path, model):
    p = tmp_path / "w.pt"
    torch.save(model.state_dict(), p)
    other = PredictorConfig(embed_dim=64, predictor_embed_dim=48, depth=3, num_heads=2, action_dim=3,
                            grid_height=4, grid_width=4, max_frames=4)
    with pytest.raises(VitacError) as e:
        load_predictor(p, other)
    msg = str(e.value)
    assert "missing: predictor_blocks.2." in msg
    assert "wrong shape: " in msg and "predictor_embed.weight [48, 32]" in msg
    assert "embed_dim=32" in msg and "depth=2" in msg
    sd = dict(model.state_dict())
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, p)
    with pytest.raises(VitacError, match="unexpected: extra.weight"):
        load_predictor(p, model.cfg)


def test_missing_and_garbage_files(tmp_path, model):
    with pytest.raises(VitacError, match="not found"):
        load_predictor(tmp_path / "nope.pt", model.cfg)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(VitacError, match="cannot read checkpoint|refusing"):
        load_predictor(junk, model.cfg)
    txt = tmp_path / "w.txt"
    txt.write_text("x")
    with pytest.raises(VitacError, match="unsupported checkpoint type"):
        load_predictor(txt, model.cfg)


def test_a_file_that_is_no_checkpoint_is_not_called_a_pickle_of_objects(tmp_path, model):
    """The refusal of pickled objects names the object; a file that is not a pickle at all (an
    unknown opcode to torch's safe loader) is called what it is, not a security refusal."""
    import datetime

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\xff" * 100)   # an opcode torch's safe unpickler does not know
    with pytest.raises(VitacError, match="not a PyTorch checkpoint") as e:
        load_predictor(junk, model.cfg)
    assert "pickled objects" not in str(e.value) and "\n" not in str(e.value)
    dated = tmp_path / "dated.pt"
    torch.save({"predictor": model.state_dict(), "when": datetime.datetime(2026, 1, 1)}, dated)
    with pytest.raises(VitacError, match=r"pickled objects other than tensors \(datetime.datetime\)") as e:
        load_predictor(dated, model.cfg)
    assert "\n" not in str(e.value)
