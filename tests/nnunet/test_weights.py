"""Loading nnU-Net checkpoints into our MedNeXt: errors that say what to pass (the happy path: test_e2e.py)."""
import pytest
import torch

import mednext_fast as mf
from mednext_fast.nnunet import network, weights


def _save(path, trainer_name, model, **extra):
    torch.save(dict(network_weights=model.state_dict(), trainer_name=trainer_name, **extra), path)


def test_architecture_from_the_trainer_name_or_the_stored_plans(tmp_path):
    b5 = mf.create_mednext("B", 2, 3, kernel_size=5, deep_supervision=True)
    _save(tmp_path / "a.pth", "nnUNetTrainerMedNeXt_B_k5_lr1e4", b5, logging=dict(dice=[torch.tensor(0.5).item()]))
    model = weights.load_model(str(tmp_path / "a.pth"))
    assert model.enc_block_0[0].conv1.weight.shape[2:] == (5, 5, 5) and model.in_channels == 2
    tiny = dict(n_channels=4, exp_r=2, kernel_size=3, block_counts=[1] * 9, do_res=True, do_res_up_down=True)
    small = mf.MedNeXt(1, n_classes=2, deep_supervision=True, **tiny)
    configs = {"base": {"spacing": [1, 1, 1]}, "mine": {"inherits_from": "base",
                                                      "architecture": network.arch_entry(config=tiny)}}
    _save(tmp_path / "b.pth", "nnUNetTrainerMedNeXt", small,
          init_args=dict(plans=dict(configurations=configs), configuration="mine"))
    assert weights.load_model(str(tmp_path / "b.pth")).stem.weight.shape[0] == 4


def test_errors_name_what_to_do(tmp_path):
    (tmp_path / "fold_1").mkdir()
    with pytest.raises(FileNotFoundError, match=r"fold_0/checkpoint_final.pth \(folds there: \['fold_1'\]\)"):
        weights.load_model(str(tmp_path))
    torch.save({"model": {}}, tmp_path / "ours.pt")
    with pytest.raises(ValueError, match="not an nnU-Net v2 checkpoint.*load_state_dict_file"):
        weights.load_model(str(tmp_path / "ours.pt"))
    _save(tmp_path / "unet.pth", "nnUNetTrainer", torch.nn.Conv3d(1, 1, 1))
    with pytest.raises(ValueError, match="not a mednext-fast trainer"):
        weights.load_model(str(tmp_path / "unet.pth"))
    torch.save(dict(network_weights={}, trainer_name="x", obj=torch.nn.Conv3d(1, 1, 1)), tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="trust_pickle=True"):
        weights.read_checkpoint(str(tmp_path / "pickled.pth"))
    assert weights.read_checkpoint(str(tmp_path / "pickled.pth"), trust_pickle=True)["trainer_name"] == "x"
