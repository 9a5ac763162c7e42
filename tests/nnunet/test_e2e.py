"""End to end with nnU-Net v2's own commands on a tiny synthetic dataset (8 cases at 32^3, CPU).

One module-scoped run, as a user would type it: nnUNetv2_plan_and_preprocess, our plans command, training
(2 epochs of 3 iterations of MedNeXt-S k3, then nnU-Net's own validation) and nnUNetv2_predict on two images
of another size. Training and prediction go through ``python -m mednext_fast.nnunet train|predict``, which
runs nnUNetv2_train's / nnUNetv2_predict's entry points with our trainer lookup first (see launcher.py: on
machines where nnU-Net's own trainer package does not import, plain nnUNetv2_train finds no external
trainer); test_lookup.py checks nnU-Net's own lookup through nnUNet_extTrainer. The tests below read what
the run left. About 2 minutes on 2 cores.
"""
import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

import mednext_fast as mf
from mednext_fast import backends
from mednext_fast.nnunet import weights

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
TEST_TRAINERS = os.path.join(HERE, "ext")
DATASET = "Dataset901_MedNeXtTest"
TRAINER = "nnUNetTrainerMedNeXt_S_k3_Test"
CONFIG = "3d_fullres_mednext"


def _run(cmd, env, log):
    result = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    with open(log, "w") as handle:
        handle.write(result.stdout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}"
    return result.stdout


def _bin(name):
    return os.path.join(os.path.dirname(sys.executable), name)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from mednext_fast.train.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("nnunet")
    env = dict(os.environ, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_extTrainer=TEST_TRAINERS, nnUNet_compile="0")
    # Augmentation in the main process (no worker start-up on 2 cores); only for training: the planner
    # sets torch's thread count from this variable.
    train_env = dict(env, nnUNet_n_proc_DA="0")
    write_synthetic_dataset(str(root / "raw" / DATASET), "mr", n_cases=8, shape=(32, 32, 32))
    # Two test images of another size (and not divisible by 16), from another seed.
    other = write_synthetic_dataset(str(root / "other"), "mr", n_cases=2, shape=(36, 30, 40), seed=7)
    images = root / "imagesTs"
    images.mkdir()
    for name in sorted(os.listdir(os.path.join(other, "imagesTr"))):
        shutil.copy(os.path.join(other, "imagesTr", name), images / name)

    logs = {}
    py = [sys.executable, "-m", "mednext_fast.nnunet"]
    steps = [
        ("plan", [_bin("nnUNetv2_plan_and_preprocess"), "-d", "901", "-c", "3d_fullres", "-np", "2",
                  "--verify_dataset_integrity"]),
        ("plans", py + ["plans", "-d", "901", "--patch", "32", "--variant", "S"]),
        ("train", py + ["train", "901", CONFIG, "0", "-tr", TRAINER, "-device", "cpu"]),
        ("predict", py + ["predict", "-i", str(images), "-o", str(root / "pred"), "-d", "901", "-c", CONFIG,
                          "-tr", TRAINER, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
                          "--disable_progress_bar"]),
    ]
    for name, cmd in steps:
        logs[name] = _run(cmd, train_env if name == "train" else env, root / f"{name}.log")
    model_dir = root / "results" / DATASET / f"{TRAINER}__nnUNetPlans__{CONFIG}"
    return dict(root=root, env=env, logs=logs, images=images, pred=root / "pred", model_dir=model_dir)


def test_training_wrote_nnunet_outputs(run):
    fold = run["model_dir"] / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    assert (fold / "validation" / "summary.json").is_file()  # nnU-Net's own final validation ran
    for name in ("plans.json", "dataset.json"):
        assert (run["model_dir"] / name).is_file()
    log = run["logs"]["train"]
    assert "Epoch 1" in log and "Training done." in log
    assert "Current learning rate: 0.001" in log  # AdamW at the official lr, not nnU-Net's 1e-2


def test_trainer_ran_our_fused_model_where_the_device_allows(run):
    # On CPU the C++ kernels are inference-only: training runs the PyTorch path, validation and
    # prediction the fused C++ path (when the extension is built, as setup.sh does).
    expected = "cpp" if backends.is_available("cpp") else "torch"
    line = f"mednext-fast: MedNeXt-S k3, backend 'auto' (training: torch, inference: {expected})"
    assert line in run["logs"]["train"]


def test_predictions_in_input_geometry(run):
    inputs = sorted(os.listdir(run["images"]))
    assert len(inputs) == 2
    for name in inputs:
        image = nib.load(run["images"] / name)
        pred_path = run["pred"] / name.replace("_0000.nii.gz", ".nii.gz")
        assert pred_path.is_file(), f"no prediction for {name}"
        pred = nib.load(pred_path)
        assert pred.shape == image.shape == (36, 30, 40)
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-4)
        labels = np.unique(np.asarray(pred.dataobj))
        assert set(labels.tolist()) <= {0, 1, 2, 3}


def test_checkpoint_loads_into_our_model_strictly(run):
    model = weights.load_model(str(run["model_dir"]), fold=0)
    assert isinstance(model, mf.MedNeXt) and model.backend == "auto" and not model.do_ds
    assert hasattr(model, "out_4")  # the deep-supervision heads were trained and are kept
    state = weights.read_checkpoint(str(run["model_dir"] / "fold_0" / "checkpoint_final.pth"))["network_weights"]
    assert list(model.state_dict()) == list(state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    # The paper's MedNeXt-S k3 built independently takes the same weights strictly.
    ref = mf.create_mednext("S", 1, 4, kernel_size=3, deep_supervision=True, backend="torch")
    ref.load_state_dict(state, strict=True)
    x = torch.randn(1, 1, 32, 32, 32)
    ref.do_ds = False
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref.eval()(x), rtol=1e-4, atol=1e-4)


def test_upkern_from_the_trained_k3_checkpoint(run):
    from mednext_fast.nnunet import launcher
    from mednext_fast.nnunet.trainer import nnUNetTrainerMedNeXt_S_k5

    ckpt = run["model_dir"] / "fold_0" / "checkpoint_final.pth"
    k3 = weights.load_model(str(ckpt))
    k5 = nnUNetTrainerMedNeXt_S_k5.build_network_architecture(None, _Config(), 1, 4, True)
    launcher.load_pretrained_weights(k5, str(ckpt))  # what -pretrained_weights calls through the launcher
    assert k5.enc_block_0[0].conv1.weight.shape[2:] == (5, 5, 5)
    expected = mf.create_mednext("S", 1, 4, kernel_size=5, deep_supervision=True)
    mf.upkern(expected, k3)
    for key, value in k5.state_dict().items():
        assert torch.equal(value, expected.state_dict()[key]), key


class _Config:
    network_arch_init_kwargs: dict = {}


def test_trainer_refuses_a_patch_not_divisible_by_16(run):
    # nnU-Net's own 3d_fullres for these ~28^3 images has a 28x28x28 patch; training it with our trainer
    # must stop at start-up with the fix, not fail inside the first forward.
    code = ("import torch; from mednext_fast.nnunet import launcher; launcher.install_hooks(); "
            "from nnunetv2.run.run_training import get_trainer_from_args; "
            "get_trainer_from_args('901', '3d_fullres', 0, 'nnUNetTrainerMedNeXt_S_k3', device=torch.device('cpu'))")
    result = subprocess.run([sys.executable, "-c", code], env=run["env"], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "ValueError: configuration '3d_fullres' has patch size 28x28x28, not divisible by 16" in result.stderr
    assert "python -m mednext_fast.nnunet plans -d DATASET --patch 32 32 32" in result.stderr


def test_benchmark_runs_both_backends_on_the_same_plans(run, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "mednext_fast.nnunet.benchmark", "--dataset", "901", "--variant", "S",
           "--device", "cpu", "--epochs", "1", "--iterations", "1", "--val-iterations", "1", "--json", str(out)]
    log = _run(cmd, dict(run["env"], nnUNet_n_proc_DA="0"), tmp_path / "bench.log")
    rows = {r["backend"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"auto", "torch"}
    assert rows["torch"]["speedup_vs_torch"] == 1.0
    assert rows["auto"]["speedup_vs_torch"] == rows["torch"]["warm_epoch_s"] / rows["auto"]["warm_epoch_s"]
    assert rows["torch"]["runs"] == "training: torch, inference: torch"  # MEDNEXT_FAST_BACKEND reached the model
    assert all(r["peak_bytes"] > 0 and len(r["epoch_s"]) == 1 for r in rows.values())
    assert "| auto |" in log and "speed-up vs torch" in log
