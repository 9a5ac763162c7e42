"""nnU-Net's own trainer lookup (what plain nnUNetv2_train / nnUNetv2_predict call) finds our trainers."""
import os
import subprocess
import sys

import pytest

from mednext_fast.nnunet import EXT_TRAINER_DIR


def _nnunet_package_imports() -> str | None:
    """None if every module of nnU-Net's trainer package imports here, else the error. nnU-Net imports them
    all before it looks in nnUNet_extTrainer (its Primus trainers need timm, hence a torchvision built for
    this torch; PyPI has none for a CPU-only torch)."""
    code = "import nnunetv2.training.nnUNetTrainer.primus.primus_trainers"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return None if result.returncode == 0 else result.stderr.strip().splitlines()[-1]


def test_nnunet_lookup_through_ext_trainer():
    problem = _nnunet_package_imports()
    if problem:
        pytest.skip(f"nnU-Net's trainer package does not import here ({problem}); the launcher "
                    "(python -m mednext_fast.nnunet train/predict) covers this machine")
    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find; "
            "import mednext_fast.nnunet.trainer as t; "
            "assert find('nnUNetTrainerMedNeXt_B_k3') is t.nnUNetTrainerMedNeXt_B_k3; print('found')")
    env = dict(os.environ, nnUNet_extTrainer=EXT_TRAINER_DIR)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "found" in result.stdout, result.stderr


def test_launcher_finds_ours_first_and_others_through_ext_trainer(monkeypatch):
    from mednext_fast.nnunet import launcher, trainer

    tests_ext = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ext")
    monkeypatch.setenv("nnUNet_extTrainer", tests_ext)
    assert launcher.find_trainer("nnUNetTrainerMedNeXt_M_k5") is trainer.nnUNetTrainerMedNeXt_M_k5
    found = launcher.find_trainer("nnUNetTrainerMedNeXt_S_k3_Test")
    assert found.__name__ == "nnUNetTrainerMedNeXt_S_k3_Test" and issubclass(found, trainer.nnUNetTrainerMedNeXt_S_k3)
