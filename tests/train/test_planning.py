"""Plans from the dataset fingerprint (train/planning.py): nnU-Net's spacing, patch and batch rules within a device
budget, explicit options kept, and a demo run that sizes its epochs to a time budget and says why."""
import json
import math
import os

import pytest

from mednext_fast.checks import trainable_size
from mednext_fast.train import planning as pl
from mednext_fast.train import run

from ._run_helpers import one_thread, tiny_dataset

_threads = pytest.fixture(autouse=True)(one_thread)


def _fingerprint(spacing, shape_after_crop, n=4):
    return dict(spacings=[list(spacing)] * n, shapes=[list(shape_after_crop)] * n,
                shapes_after_crop=[list(shape_after_crop)] * n)


def _valid_patch(patch, budget):
    return all(p % 16 == 0 and p > 0 for p in patch) and math.prod(patch) <= budget.patch_voxels \
        and trainable_size(patch)


def test_isotropic_head_is_coarsened_on_cpu_and_kept_at_1mm_for_the_paper():
    fp = _fingerprint([1.0, 1.0, 1.0], [181, 215, 177])
    cpu, reasons = pl.plan(fp, pl.CPU_BUDGET)
    # Coarsened isotropically until the median case fits the case budget, and no further.
    spacing = cpu["target_spacing"]
    assert spacing[0] == spacing[1] == spacing[2] > 1.0
    extent = math.prod(e / spacing[0] for e in (181, 215, 177))
    finer = spacing[0] - pl.COARSEN_STEP
    assert extent <= pl.CPU_BUDGET.case_voxels < math.prod(e / finer for e in (181, 215, 177))
    assert _valid_patch(cpu["patch_size"], pl.CPU_BUDGET) and cpu["batch_size"] == 2
    assert "coarsened" in reasons[0] and "median spacing [1.0, 1.0, 1.0]" in reasons[0]
    paper, reasons = pl.plan(fp, pl.PAPER_BUDGET, "1mm")
    assert paper == dict(target_spacing=[1.0, 1.0, 1.0], patch_size=[128, 128, 128], batch_size=2)
    assert "paper" in reasons[0]


def test_anisotropic_spacing_keeps_its_coarse_axis():
    fp = _fingerprint([0.8, 0.8, 5.0], [400, 380, 36])
    cpu, _ = pl.plan(fp, pl.CPU_BUDGET)
    x, y, z = cpu["target_spacing"]
    assert z == 5.0 and x == y and 0.8 < x < 5.0  # in-plane coarsened, slices untouched
    assert _valid_patch(cpu["patch_size"], pl.CPU_BUDGET)
    paper, _ = pl.plan(fp, pl.PAPER_BUDGET, "median")
    assert paper["target_spacing"] == [0.8, 0.8, 5.0]
    patch = paper["patch_size"]
    assert _valid_patch(patch, pl.PAPER_BUDGET) and max(patch) <= 128
    assert patch[2] <= 48 and patch[0] >= patch[2]  # thin along z, as the data is


def test_anisotropy_rule_of_the_median_spacing_is_used():
    # One very coarse axis in some cases: nnU-Net takes its 10th percentile, not the median.
    fp = dict(spacings=[[1, 1, 6], [1, 1, 6], [1, 1, 6], [1, 1, 1.5], [1, 1, 1.5]],
              shapes=[[300, 300, 30]] * 5, shapes_after_crop=[[300, 300, 30]] * 5)
    paper, _ = pl.plan(fp, pl.PAPER_BUDGET, "median")
    assert paper["target_spacing"][2] < 6.0


def test_tiny_dataset_gets_a_trainable_patch_and_the_minimum_batch():
    fp = _fingerprint([1.0, 1.0, 1.0], [20, 18, 12], n=2)
    cpu, _ = pl.plan(fp, pl.CPU_BUDGET)
    assert cpu["target_spacing"] == [1.0, 1.0, 1.0]  # already inside the case budget
    assert trainable_size(cpu["patch_size"]) and all(p % 16 == 0 for p in cpu["patch_size"])
    assert cpu["batch_size"] == 2  # 5 % of 2 small cases is less than one patch: nnU-Net's minimum


def test_small_patches_get_larger_batches_within_five_percent_of_the_data():
    assert pl.fit_batch([32, 32, 32], 64 ** 3, dataset_voxels=1e9) == 16  # 2 x the budget / patch
    assert pl.fit_batch([32, 32, 32], 64 ** 3, dataset_voxels=200 * 32 ** 3) == 10  # 5 % of the data
    assert pl.fit_batch([64, 64, 64], 64 ** 3, dataset_voxels=1e9) == 2


def test_explicit_values_win_and_say_so():
    fp = _fingerprint([1.0, 1.0, 1.0], [181, 215, 177])
    got, reasons = pl.plan(fp, pl.CPU_BUDGET, target_spacing=[3, 3, 3], patch_size=[48, 48, 32], batch_size=5)
    assert got == dict(target_spacing=[3.0, 3.0, 3.0], patch_size=[48, 48, 32], batch_size=5)
    assert all(r.endswith(": given") for r in reasons)


def test_fit_epochs():
    assert pl.fit_epochs(1.0, 25, 6, minutes=9) == int(540 / 27)
    assert pl.fit_epochs(0.5, 25, 6, minutes=9) > pl.fit_epochs(1.0, 25, 6, minutes=9)
    assert pl.fit_epochs(100.0, 25, 6, minutes=1) == 1  # always at least one epoch


def test_demo_run_plans_from_the_data_and_fits_its_time_budget(tmp_path):
    ds = tiny_dataset(tmp_path / "ds", n_cases=3)
    out = tmp_path / "run"
    assert run.main(["--dataset", ds, "--output", str(out), "--preset", "demo", "--time-budget", "0.05",
                     "--iters-per-epoch", "2", "--val-iters", "1", "--no-progress", "--workers", "0", "--threads",
                     "1", "--backend", "torch", "--no-final-validation"]) == 0
    cfg = json.loads((out / "plans.json").read_text())["config"]
    assert cfg["step_seconds"] > 0 and cfg["epochs"] == pl.fit_epochs(cfg["step_seconds"], 2, 1, 0.05)
    assert cfg["target_spacing"] == [1.0, 1.0, 1.0] and trainable_size(cfg["patch_size"])
    log = (out / "training_log.txt").read_text()
    for reason in cfg["plan_reasons"]:
        assert f"plans: {reason}" in log
    assert any("measured training step" in r for r in cfg["plan_reasons"])
    # A resumed run keeps its planned epochs instead of timing again (the schedule must not change).
    assert run.main(["--dataset", ds, "--output", str(out), "--preset", "demo", "--time-budget", "30",
                     "--iters-per-epoch", "2", "--val-iters", "1", "--no-progress", "--workers", "0", "--threads",
                     "1", "--backend", "torch", "--no-final-validation", "--resume"]) == 0
    again = json.loads((out / "plans.json").read_text())["config"]
    assert again["epochs"] == cfg["epochs"] and "kept from the run being resumed" in again["plan_reasons"][-1]
    assert os.path.isfile(out / "fold_0" / "checkpoint_final.pt")
