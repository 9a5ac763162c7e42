"""End to end on a tiny synthetic dataset: train 2 epochs x 3 iterations, validate, predict, metrics."""
import json
import math
import os
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest
import torch

from mednext_fast.train import predict, run

from ._run_helpers import one_thread, predict_cmd, run_cmd, tiny_dataset

_threads = pytest.fixture(autouse=True)(one_thread)


def test_train_validate_predict(tmp_path):
    ds = tiny_dataset(tmp_path / "ds")
    out = tmp_path / "run"
    common = ["--dataset", ds, "--output", out, "--preset", "tiny", "--no-progress", "--workers", "0", "--threads", "1",
              "--backend", "torch"]  # the loop is under test here, not the fused CPU kernels
    assert run.main(["--fold", "0", *map(str, common)]) == 0
    assert run.main(["--fold", "1", "--no-final-validation", *map(str, common)]) == 0

    splits = json.loads((out / "splits_final.json").read_text())
    assert len(splits) == 4 and sorted(splits[0]["train"] + splits[0]["val"]) == sorted(
        f"mr_{i:03d}" for i in range(4))
    assert not set(splits[0]["train"]) & set(splits[0]["val"])
    fold = out / "fold_0"
    for name in ("checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt", "progress.png",
                 "training_log.txt"):
        assert (fold / name).is_file(), name
    assert (fold / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    progress = json.loads((fold / "progress.json").read_text())
    assert len(progress["train_loss"]) == 2 and all(math.isfinite(v) for v in progress["train_loss"])
    assert progress["lr"] == pytest.approx([1e-3, 1e-3 * 0.5 ** 0.9])
    latest = torch.load(fold / "checkpoint_latest.pt", weights_only=False)
    assert latest["epoch"] == 2

    # metrics of the full-volume validation, in the original geometry of the raw case
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    (case,) = splits[0]["val"]
    per_label = summary["per_case"][case]
    assert sorted(per_label) == ["1", "2", "3"]
    for values in per_label.values():
        assert 0 <= values["dice"] <= 1 and 0 <= values["nsd"] <= 1
        assert values["n_ref"] > 0
        # HD95 is null exactly where the prediction is empty (JSON has no inf), else a distance
        assert (values["hd95"] is None) == (values["n_pred"] == 0)
        assert values["hd95_worst_case"] >= (values["hd95"] or 0)
    assert (fold / "validation" / "summary.txt").read_text().count(case) == 3
    pred = nib.load(fold / "validation" / f"{case}.nii.gz")
    ref = nib.load(os.path.join(ds, "labelsTr", f"{case}.nii.gz"))
    assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine)

    # predict: a folder of NIfTI in, labels out, ensembling folds 0 and 1
    inp = tmp_path / "in"
    inp.mkdir()
    for c in ("mr_000", "mr_003"):
        shutil.copy(os.path.join(ds, "imagesTr", f"{c}_0000.nii.gz"), inp)
    labels = tmp_path / "labels"
    assert predict.main(["-i", str(inp), "-o", str(labels), "-m", str(out), "--folds", "0", "1",
                         "--no-mirror", "--no-progress", "--backend", "torch"]) == 0
    for c in ("mr_000", "mr_003"):
        got = nib.load(labels / f"{c}.nii.gz")
        src = nib.load(inp / f"{c}_0000.nii.gz")
        assert got.shape == src.shape and np.allclose(got.affine, src.affine)
        assert set(np.unique(np.asarray(got.dataobj))) <= {0, 1, 2, 3}


def test_cli_help_documents_every_option_and_script_runs_outside_the_repo(tmp_path):
    # Run as scripts from another folder: run.py and predict.py find the package through the install.
    res = subprocess.run(run_cmd("--help"), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    for option in ("--variant", "--kernel", "--amp", "--checkpointing", "--backend", "--compile", "--init-from",
                   "--fold", "--resume", "--epochs", "--iters-per-epoch", "--preset", "predict", "torchrun"):
        assert option in res.stdout, option
    res = subprocess.run(predict_cmd("--help"), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--folds" in res.stdout


def test_clear_errors(tmp_path):
    with pytest.raises((FileNotFoundError, ValueError), match="dataset.json"):
        run.main(["--dataset", str(tmp_path), "--output", str(tmp_path / "r")])
    ds = tiny_dataset(tmp_path / "ds", n_cases=2)
    with pytest.raises(SystemExit, match="divisible by 16"):
        run.main(["--dataset", ds, "--output", str(tmp_path / "r"), "--patch-size", "24"])
    with pytest.raises(SystemExit, match="fold"):
        run.main(["--dataset", ds, "--output", str(tmp_path / "r"), "--preset", "tiny", "--fold", "7"])
    with pytest.raises(SystemExit, match="--time-budget 0: need a positive number of minutes"):
        run.main(["--dataset", ds, "--output", str(tmp_path / "r"), "--time-budget", "0"])


def test_init_from_a_larger_kernel_is_a_one_line_error(tmp_path):
    ds = tiny_dataset(tmp_path / "ds", n_cases=2)
    common = ["--dataset", ds, "--preset", "tiny", "--no-progress", "--workers", "0", "--threads", "1", "--backend",
              "torch", "--epochs", "1", "--iters-per-epoch", "1", "--val-iters", "1", "--no-final-validation"]
    assert run.main([*common, "--output", str(tmp_path / "k5"), "--kernel", "5"]) == 0
    ckpt = str(tmp_path / "k5" / "fold_0" / "checkpoint_final.pt")
    with pytest.raises(SystemExit, match=r"^--init-from .*checkpoint_final.pt: .*at least as large") as err:
        run.main([*common, "--output", str(tmp_path / "k3"), "--kernel", "3", "--init-from", ckpt])
    assert "\n" not in str(err.value)
