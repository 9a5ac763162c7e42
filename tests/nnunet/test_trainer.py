"""The trainers' nnU-Net hooks and recipe, without a training run (fast; the run is test_e2e.py)."""
import copy
import json
import os

import numpy as np
import pytest
import torch

import mednext_fast as mf
from mednext_fast.configs import variant_config
from mednext_fast.nnunet import network, trainer
from mednext_fast.nnunet.trainer import nnUNetTrainerMedNeXt, nnUNetTrainerMedNeXt_L_k5, nnUNetTrainerMedNeXt_S_k3

TINY = dict(n_channels=4, exp_r=2, kernel_size=3, do_res=True, do_res_up_down=True, block_counts=[1] * 9,
            checkpoint_style=None)


class _Config:
    """The one ConfigurationManager attribute build_network_architecture reads."""

    def __init__(self, arch_kwargs=None):
        self.network_arch_init_kwargs = arch_kwargs or {}


def test_every_paper_variant_is_a_trainer():
    assert len(trainer.__all__) == 13
    for v in "SBML":
        for k in (3, 5, 7):
            cls = getattr(trainer, f"nnUNetTrainerMedNeXt_{v}_k{k}")
            assert issubclass(cls, nnUNetTrainerMedNeXt) and cls.__module__ == "mednext_fast.nnunet.trainer"
            assert cls.mednext_config(None) == variant_config(v, k)
    assert nnUNetTrainerMedNeXt_L_k5.mednext_config(None)["checkpoint_style"] == "outside_block"  # as official


def test_new_signature_builds_heads_either_way_and_switches_them():
    on = nnUNetTrainerMedNeXt_S_k3.build_network_architecture(None, _Config(), 2, 3, True)
    off = nnUNetTrainerMedNeXt_S_k3.build_network_architecture(None, _Config(), 2, 3, enable_deep_supervision=False)
    assert isinstance(on, mf.MedNeXt) and on.backend == "auto" and on.do_ds and not off.do_ds
    # nnU-Net's inference rebuilds with deep supervision off, then loads the training weights strictly.
    off.load_state_dict(on.state_dict(), strict=True)
    x = torch.randn(1, 2, 32, 32, 32)
    with torch.no_grad():
        outs = on.eval()(x)
        assert [o.shape[2] for o in outs] == [32, 16, 8, 4, 2]
        torch.testing.assert_close(off.eval()(x), outs[0])
    assert not off.out_1.conv_out.weight.requires_grad and on.out_1.conv_out.weight.requires_grad
    assert not on.dummy_tensor.requires_grad  # never in the forward: DDP would wait for its gradient


def test_old_signature_positional_and_keyword():
    # nnU-Net <= 2.6: (arch_class_name, arch_kwargs, arch_kwargs_req_import, n_in, n_out[, deep_supervision]);
    # its trainer passes deep supervision positionally, its predictor as a keyword.
    trained = nnUNetTrainerMedNeXt.build_network_architecture("mednext_fast.MedNeXt", dict(TINY, strides=[]), [],
                                                              1, 5, True)
    inference = nnUNetTrainerMedNeXt.build_network_architecture("mednext_fast.MedNeXt", TINY, [], 1, 5,
                                                                enable_deep_supervision=False)
    assert trained.do_ds and not inference.do_ds
    assert trained.in_channels == 1 and trained.n_classes == 5 and trained.stem.weight.shape[0] == 4
    inference.load_state_dict(trained.state_dict(), strict=True)


def test_generic_trainer_takes_the_plans_architecture_and_names_the_fix_otherwise():
    arch_kwargs = network.arch_entry(config=TINY)["arch_kwargs"]
    model = nnUNetTrainerMedNeXt.build_network_architecture(None, _Config(arch_kwargs), 1, 2, False)
    assert model.stem.weight.shape[0] == 4
    unet_kwargs = {"n_stages": 5, "features_per_stage": [32, 64], "strides": []}
    with pytest.raises(ValueError, match="not a MedNeXt.*python -m mednext_fast.nnunet plans"):
        nnUNetTrainerMedNeXt.build_network_architecture(None, _Config(unet_kwargs), 1, 2, True)


def test_deep_supervision_switch_reaches_through_wrappers():
    model = nnUNetTrainerMedNeXt.build_network_architecture(None, _Config(TINY), 1, 2, True)

    class DDPLike(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    for wrapped in (model, torch.compile(model), DDPLike(torch.compile(model))):
        network.set_deep_supervision(wrapped, False)
        assert model.do_ds is False
        network.set_deep_supervision(wrapped, True)
        assert model.do_ds is True
    with pytest.raises(TypeError, match="expected a MedNeXt"):
        network.set_deep_supervision(torch.nn.Linear(1, 1), True)


def _compiled_matches_eager(training: bool):
    torch.manual_seed(0)
    model = nnUNetTrainerMedNeXt.build_network_architecture(None, _Config(TINY), 1, 2, True).train(training)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # fullgraph: any graph break raises
    x = torch.randn(2, 1, 32, 32, 32)
    params = list(model.stem.parameters())
    outs, eager = compiled(x), model(x)
    for a, b in zip(outs, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if training:
        got = torch.autograd.grad(sum(o.square().mean() for o in outs), params)
        want = torch.autograd.grad(sum(o.square().mean() for o in eager), params)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_compile_keeps_our_model_whole_in_eval_mode():
    # nnU-Net compiles the network on CUDA by default (nnUNet_compile), before its first forward, and never on
    # CPU; here (CPU, gradients on) 'auto' runs the PyTorch path, the graph around the ops Triton fills on CUDA.
    _compiled_matches_eager(training=False)


def test_compile_keeps_our_model_whole_in_training():
    _compiled_matches_eager(training=True)


# -- the recipe, on a trainer built from a small plans file (no preprocessed data needed) --------------
PLANS = {
    "dataset_name": "Dataset902_Unit", "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [1, 1, 1],
    "original_median_shape_after_transp": [64, 64, 64], "image_reader_writer": "SimpleITKIO",
    "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "experiment_planner_used": "ExperimentPlanner",
    "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {},
    "configurations": {
        "3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
                       "batch_size": 2, "patch_size": [40, 64, 64], "median_image_size_in_voxels": [64, 64, 64],
                       "spacing": [1.0, 1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"],
                       "use_mask_for_norm": [False], "batch_dice": False,
                       "architecture": {"network_class_name": "x", "arch_kwargs": {"strides": []},
                                        "_kw_requires_import": []}},
        "3d_fullres_mednext": {"inherits_from": "3d_fullres", "patch_size": [32, 32, 32],
                               "architecture": network.arch_entry(config=TINY)},
    },
}
DATASET_JSON = {"channel_names": {"0": "MR"}, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": 2,
                "file_ending": ".nii.gz"}


@pytest.fixture
def make_trainer(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))

    def make(cls, configuration="3d_fullres_mednext"):
        plans = dict(copy.deepcopy(PLANS), continue_training=False)
        return cls(plans, configuration, 0, DATASET_JSON, torch.device("cpu"))
    return make


def test_recipe_is_the_official_mednext_one(make_trainer):
    t = make_trainer(nnUNetTrainerMedNeXt_S_k3)
    t.network = t.build_network_architecture(t.plans_manager, t.configuration_manager, 1, 3, True)
    optimizer, scheduler = t.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["eps"], group["weight_decay"]) == (1e-3, 1e-4, 3e-5)
    for epoch in (0, 500, 999):
        scheduler.step(epoch)
        assert group["lr"] == pytest.approx(1e-3 * (1 - epoch / t.num_epochs) ** 0.9)
    assert t._get_deep_supervision_scales() == [[1.0] * 3, [0.5] * 3, [0.25] * 3, [0.125] * 3, [0.0625] * 3]
    weights = np.array(t._build_loss().weight_factors)
    np.testing.assert_allclose(weights, np.array([1, 1 / 2, 1 / 4, 1 / 8, 1 / 16]) / 1.9375)
    assert t.num_epochs == 1000 and t.num_iterations_per_epoch == 250


def test_trainer_refuses_a_patch_not_divisible_by_16(make_trainer):
    with pytest.raises(ValueError, match=r"40x64x64, not divisible by 16.*--patch 48 64 64"):
        make_trainer(nnUNetTrainerMedNeXt_S_k3, "3d_fullres")


def test_nnunet_finds_the_ext_folder_as_it_searches_it():
    # The call nnU-Net makes for each nnUNet_extTrainer folder (find_objects.py), on ours.
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    from mednext_fast.nnunet import EXT_TRAINER_DIR

    for name in ("nnUNetTrainerMedNeXt_B_k3", "nnUNetTrainerMedNeXt_L_k7", "nnUNetTrainerMedNeXt"):
        found = recursive_find_python_class(EXT_TRAINER_DIR, name, None, base_folder=EXT_TRAINER_DIR,
                                            cleanup_imports_from_base_folder=True)
        assert found is getattr(trainer, name)


def test_env_prints_the_export_and_keeps_other_folders(monkeypatch, capsys):
    from mednext_fast.nnunet import EXT_TRAINER_DIR
    from mednext_fast.nnunet.__main__ import main

    monkeypatch.setenv("nnUNet_extTrainer", "/my/trainers")
    assert main(["env"]) == 0
    assert capsys.readouterr().out.strip() == f"export nnUNet_extTrainer=/my/trainers{os.pathsep}{EXT_TRAINER_DIR}"
    assert os.path.isfile(os.path.join(EXT_TRAINER_DIR, "mednext_fast_trainers.py"))
    assert json.dumps(PLANS)  # the unit plans above are plain JSON, as nnU-Net stores them
