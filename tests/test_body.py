"""fitting.body: one factory for SKEL + the keypoint regressor; the converter carries its models dir."""
from pathlib import Path

import pytest
import torch
from skelpgt.fitting.body import load_body
from skelpgt.fitting.convert import ConvertConfig, Converter
from skelpgt.fitting.genders import converter_for_gender
from skelpgt.fitting.keypoints import KeypointRegressor
from skelpgt.fitting.skel import SKEL
from skelpgt.fitting.skelify import Skelify, SkelifyConfig


def test_load_body_reads_the_skel_of_the_gender_and_the_regressor(models_dir):
    body = load_body(str(models_dir), "female")
    assert body.models_dir == Path(models_dir) and body.skel.gender == "female"
    assert torch.equal(body.skel.v_template, SKEL.from_file(models_dir, "female").v_template)
    assert not torch.equal(body.skel.v_template, load_body(models_dir).skel.v_template)
    assert torch.equal(body.keypoints.matrix, KeypointRegressor.from_models_dir(models_dir).matrix)


def test_skelify_from_models_dir_equals_one_assembled_by_hand(models_dir, skel_model):
    config = SkelifyConfig(iterations=2)
    made, by_hand = Skelify.from_models_dir(models_dir, config), Skelify(skel_model, KeypointRegressor.from_models_dir(models_dir), config)
    assert made.config == config and made.skel.gender == "male"
    for name in ("pair_joint", "pair_template", "pair_shape", "pair_pose", "pair_to_kp"):
        assert torch.equal(getattr(made, name), getattr(by_hand, name)), name


def test_another_smpl_gender_is_loaded_from_the_converters_models_dir(models_dir):
    conv = Converter.from_models_dir(str(models_dir), ConvertConfig(smpl_gender="male", chunk_size=4))
    assert conv.models_dir == Path(models_dir)
    female = converter_for_gender(conv, "female")
    assert female.config.smpl_gender == "female" and female.models_dir == conv.models_dir
    assert female.config.digest() != conv.config.digest() and converter_for_gender(conv, "female") is female
    bare = Converter(conv.smpl, conv.skel, conv.config, conv.keypoints)
    assert bare.models_dir is None and converter_for_gender(bare, "male") is bare
    with pytest.raises(ValueError, match="SMPL gender 'female'.*models_dir"):
        converter_for_gender(bare, "female")
