"""Without nnunetv2: the trainers and launcher name the extra to install; plans and weights still work."""
import subprocess
import sys

HIDE = "import sys; sys.modules['nnunetv2'] = None; "  # as if nnunetv2 were not installed


def _run(code):
    return subprocess.run([sys.executable, "-c", HIDE + code], capture_output=True, text=True, timeout=120)


def test_trainer_import_names_the_extra():
    result = _run("import mednext_fast.nnunet.trainer")
    assert result.returncode != 0
    assert "ImportError: mednext_fast.nnunet needs nnU-Net v2" in result.stderr
    assert "pip install mednext-fast[nnunet]" in result.stderr


def test_train_command_names_the_extra():
    result = _run("from mednext_fast.nnunet.__main__ import main; main(['train', '1', '3d_fullres_mednext', '0'])")
    assert result.returncode != 0 and "pip install mednext-fast[nnunet]" in result.stderr


def test_plans_and_weights_need_no_nnunetv2():
    result = _run("import mednext_fast.nnunet.plans, mednext_fast.nnunet.weights, mednext_fast.nnunet.upkern; "
                  "from mednext_fast.nnunet.__main__ import main; main(['env'])")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("export nnUNet_extTrainer=")
