import json

import pytest

from vitac_deploy import PredictorConfig, VitacError


def test_default_preset_matches_spec():
    cfg = PredictorConfig.preset("vitac-l384")
    assert (cfg.embed_dim, cfg.predictor_embed_dim, cfg.depth, cfg.num_heads) == (1024, 384, 24, 16)
    assert (cfg.tokens_per_frame, cfg.cond_tokens, cfg.head_dim, cfg.rope_dim) == (256, 2, 24, 8)
    assert cfg.max_frames == 8
    assert cfg.num_parameters() == 43_378_816


def test_vitg_preset():
    cfg = PredictorConfig.preset("vjepa2-ac-vitg")
    assert (cfg.embed_dim, cfg.predictor_embed_dim, cfg.head_dim, cfg.rope_dim, cfg.action_dim) == (1408, 1024, 64, 20, 7)


def test_from_upstream_matches_golden(golden):
    cfg = golden.cfg
    assert cfg.num_parameters() == golden.meta.get("n_params", 43_378_816)
    assert cfg.tokens_per_frame == golden.N


def test_swiglu_hidden_is_rounded_up():
    cfg = PredictorConfig(embed_dim=192, predictor_embed_dim=256, depth=1, num_heads=4, action_dim=7,
                          use_silu=True, wide_silu=True)
    assert cfg.mlp_hidden == 688


def test_json_round_trip(tmp_path):
    cfg = PredictorConfig(embed_dim=64, predictor_embed_dim=96, depth=3, num_heads=4, use_extrinsics=True)
    p = tmp_path / "c.json"
    p.write_text(cfg.to_json())
    assert PredictorConfig.from_json(p) == cfg


def test_upstream_kwargs_json(tmp_path):
    p = tmp_path / "u.json"
    p.write_text(json.dumps({"img_size": [128, 96], "patch_size": 16, "num_frames": 8, "tubelet_size": 2,
                             "embed_dim": 64, "predictor_embed_dim": 48, "depth": 2, "num_heads": 2,
                             "action_embed_dim": 3, "drop_path_rate": 0.1}))
    cfg = PredictorConfig.from_json(p)
    assert (cfg.grid_height, cfg.grid_width, cfg.max_frames, cfg.action_dim) == (8, 6, 4, 3)


@pytest.mark.parametrize("kwargs, field", [
    (dict(predictor_embed_dim=100, num_heads=16), "predictor_embed_dim"),
    (dict(predictor_embed_dim=64, num_heads=16), "num_heads"),  # head_dim 4 < 6
    (dict(depth=0), "depth"),
    (dict(embed_dim=-3), "embed_dim"),
    (dict(max_frames=0), "max_frames"),
    (dict(layer_norm_eps=0.0), "layer_norm_eps"),
    (dict(use_silu="yes"), "use_silu"),
])
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(VitacError, match=field):
        PredictorConfig(**kwargs)


def test_unknown_fields_and_bad_files(tmp_path):
    with pytest.raises(VitacError, match="colour"):
        PredictorConfig.from_dict({"colour": 3, "depth": 2})
    with pytest.raises(VitacError, match="not found"):
        PredictorConfig.from_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(VitacError, match="cannot read config"):
        PredictorConfig.from_json(bad)
    with pytest.raises(VitacError, match="unknown preset"):
        PredictorConfig.preset("vit-huge")
    with pytest.raises(VitacError, match="use_rope"):
        PredictorConfig.from_upstream({"use_rope": False})
