"""nnU-Net's fold conventions: 'all' trains one model on every case with nothing held out; 0..4 are the
cross-validation folds; a one-case dataset trains 'all' by default; bad folds are one-line errors."""
import os
import subprocess

import pytest

from mednext_fast.train import predict, run
from mednext_fast.train.trainer import select_folds

from ._run_helpers import one_thread, run_cmd, tiny_dataset

_threads = pytest.fixture(autouse=True)(one_thread)


def _common(ds, out):
    return ["--dataset", ds, "--output", str(out), "--preset", "tiny", "--no-progress", "--workers", "0",
            "--threads", "1", "--backend", "torch", "--epochs", "1", "--iters-per-epoch", "1", "--val-iters", "1"]


def test_select_folds():
    assert select_folds(None, 4) == [0]
    assert select_folds(["0", "1", "1", "all"], 4) == [0, 1, "all"]
    said = []
    assert select_folds(None, 1, said.append) == ["all"] and "validation needs >= 2" in said[0]
    with pytest.raises(SystemExit, match="needs at least 2 cases .* --fold all"):
        select_folds(["0"], 1)
    with pytest.raises(SystemExit, match="a fold number or 'all', got 'x'"):
        select_folds(["x"], 4)


def test_fold_all_trains_on_every_case_and_predicts(tmp_path):
    ds = tiny_dataset(tmp_path / "ds", n_cases=3)
    out = tmp_path / "run"
    assert run.main(["--fold", "all", *_common(ds, out)]) == 0
    assert os.path.isfile(out / "fold_all" / "checkpoint_final.pt")
    assert not (out / "fold_all" / "validation").exists()  # nothing held out: no final validation
    assert not (out / "splits_final.json").exists()  # no cross-validation split was used
    log = (out / "fold_all" / "training_log.txt").read_text()
    assert "fold all: 3 training case(s), no held-out validation" in log
    labels = tmp_path / "labels"
    images = os.path.join(ds, "imagesTr")
    assert predict.main(["-i", images, "-o", str(labels), "-m", str(out), "--no-mirror", "--no-progress",
                         "--backend", "torch"]) == 0  # default folds: only 'all' was trained
    assert sorted(os.listdir(labels)) == sorted(f"mr_{i:03d}.nii.gz" for i in range(3))
    with pytest.raises(SystemExit, match=r"fold\(s\) \[0\] have no final checkpoint; trained: \['all'\]"):
        predict.main(["-i", images, "-o", str(labels), "-m", str(out), "--folds", "0"])


def test_one_case_dataset_trains_fold_all(tmp_path):
    ds = tiny_dataset(tmp_path / "ds", n_cases=1)
    out = tmp_path / "run"
    res = subprocess.run(run_cmd(*_common(ds, out)), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "training fold 'all'" in res.stdout and "validation needs >= 2 cases" in res.stdout
    assert os.path.isfile(out / "fold_all" / "checkpoint_final.pt")
    res = subprocess.run(run_cmd("--fold", "0", *_common(ds, tmp_path / "run0")), capture_output=True, text=True)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        "--fold 0: cross-validation needs at least 2 cases and this dataset has 1; train on it with --fold all"]
