"""Full-volume prediction with trained folds (nnU-Net's predictor): a run's models, images in their own
geometry, the final validation of a fold, and a folder of NIfTI files.

An image is preprocessed like the training cases, segmented by the sliding window (``inference``) with the
folds' softmax probabilities averaged, and the label map put back into the image's original geometry.
"""
from __future__ import annotations

import json
import os

import numpy as np

import mednext_fast as mf
from mednext_fast.atomic import write_json, write_text
from mednext_fast.train import checkpointing as ckpt
from mednext_fast.train import data_bridge as data
from mednext_fast.train import metrics as metrics_mod
from mednext_fast.train.inference import predict_probabilities, window_batch
from mednext_fast.train.logging_utils import progress_bar
from mednext_fast.train.preprocess import revert_to_original
from mednext_fast.train.presets import build_model

CHECKPOINTS = {"final": ckpt.FINAL, "best": ckpt.BEST, "latest": ckpt.LATEST}
METRIC_CONVENTIONS = ("DSC NaN if both empty; NSD at 1 mm and HD95 (max of the two directed 95th percentiles) "
                      "on edge voxels, MONAI default; HD95 null where one mask is empty, counted in "
                      "hd95_undefined; hd95_worst_case puts those at the volume diagonal; see train/metrics.py")


def predict_image(models, image, spacing, affine, plans, cfg, device, amp, mirror: bool, step: float = 0.5,
                  progress=None) -> np.ndarray:
    """Label map (X, Y, Z) of ``image`` (C, X, Y, Z) with voxel ``spacing`` and ``affine``, on the image's
    own grid."""
    pre, props = data.preprocess_image(image, spacing, plans, affine)
    probs = predict_probabilities(models, pre, cfg["patch_size"], cfg["n_classes"], step=step,
                                  mirror_axes=(0, 1, 2) if mirror else (), device=device, amp_dtype=amp,
                                  batch_size=window_batch(cfg["patch_size"]), progress=progress)
    return revert_to_original(probs, props, plans)


# ---------------------------------------------------------------------------------------------------
# Final validation of a fold
# ---------------------------------------------------------------------------------------------------
def final_validation(models, cfg, ds: data.RawDataset, plans, case_names, out_dir, device, amp, mirror: bool,
                     env, log, hide: bool) -> dict | None:
    """Predict each validation case from its raw files, export to the original geometry, score it.

    Every rank predicts its share of the cases; rank 0 scores them all and returns the summary.
    """
    os.makedirs(out_dir, exist_ok=True)
    mine = case_names[env.rank::env.world]
    for name in progress_bar(mine, disable=hide, desc="validation"):
        image, _, spacing, affine = data.read_raw_case(ds, name, with_label=False)
        label = predict_image(models, image, spacing, affine, plans, cfg, device, amp, mirror)
        data.write_label(label, affine, os.path.join(out_dir, f"{name}.nii.gz"))
    env.barrier()
    if not env.main:
        return None
    per_case = {}
    labels = sorted(v for v in ds.labels.values() if v > 0)
    for name in case_names:
        pred, _, _ = data.read_image_files([os.path.join(out_dir, f"{name}.nii.gz")])
        _, ref, spacing, _ = data.read_raw_case(ds, name)
        per_case[name] = metrics_mod.case_metrics(pred[0].astype(np.int16), ref, labels, spacing)
    summary = dict(mean=metrics_mod.summarize(per_case), per_case=metrics_mod.jsonable(per_case),
                   conventions=METRIC_CONVENTIONS)
    write_json(os.path.join(out_dir, "summary.json"), summary)
    write_text(os.path.join(out_dir, "summary.txt"), metrics_mod.format_table(per_case))
    fg = summary["mean"]["foreground_mean"]
    log(f"validation ({len(case_names)} cases): {metrics_mod.format_summary(fg)} -> {out_dir}/summary.json")
    return summary


# ---------------------------------------------------------------------------------------------------
# A trained run
# ---------------------------------------------------------------------------------------------------
def load_run(run_dir: str) -> tuple:
    """(plans, config) saved by training in ``run_dir``/plans.json."""
    path = os.path.join(run_dir, "plans.json")
    if not os.path.isfile(path):
        raise SystemExit(f"{run_dir}: no plans.json; -m must be a run folder written by training")
    with open(path) as handle:
        saved = json.load(handle)
    return saved["plans"], saved["config"]


def trained_folds(run_dir: str, checkpoint: str = "final") -> list:
    """The folds of ``run_dir`` that hold a ``checkpoint`` ('final', 'best' or 'latest') checkpoint: the
    cross-validation folds in order, then 'all' if trained."""
    name = CHECKPOINTS[checkpoint]
    found = [d[5:] for d in os.listdir(run_dir)
             if d.startswith("fold_") and os.path.isfile(os.path.join(run_dir, d, name))]
    numbered = sorted(int(f) for f in found if f.isdigit())
    return numbered + [data.FOLD_ALL] * (data.FOLD_ALL in found)


def load_models(run_dir: str, cfg: dict, folds, checkpoint: str = "final", backend: str = "auto",
                device="cpu") -> list:
    """One model per fold, in eval mode on ``device``."""
    models = []
    for fold in folds:
        model = build_model(cfg, backend)
        model.load_state_dict(mf.load_state_dict_file(os.path.join(run_dir, f"fold_{fold}", CHECKPOINTS[checkpoint])))
        models.append(model.to(device).eval())
    return models


# ---------------------------------------------------------------------------------------------------
# A folder of images
# ---------------------------------------------------------------------------------------------------
def group_inputs(folder: str, in_channels: int) -> dict:
    """{case: [one file per channel]} from nnU-Net names <case>_<channel:04d>.nii.gz, or any *.nii(.gz)
    as its own case for single-channel models."""
    files = sorted(f for f in os.listdir(folder) if f.endswith((".nii.gz", ".nii")))
    if not files:
        raise SystemExit(f"{folder}: no .nii.gz / .nii files")
    cases: dict = {}
    for f in files:
        stem = f[:-7] if f.endswith(".nii.gz") else f[:-4]
        if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit():
            cases.setdefault(stem[:-5], {})[int(stem[-4:])] = os.path.join(folder, f)
        elif in_channels == 1:
            cases.setdefault(stem, {})[0] = os.path.join(folder, f)
        else:
            raise SystemExit(f"{f}: multi-channel models need nnU-Net names <case>_<channel:04d>.nii.gz")
    for case, chans in cases.items():
        if sorted(chans) != list(range(in_channels)):
            raise SystemExit(f"case {case}: found channels {sorted(chans)}, the model needs 0..{in_channels - 1}")
    return {case: [chans[c] for c in range(in_channels)] for case, chans in cases.items()}


def predict_folder(models, cases: dict, out_dir: str, plans, cfg, device, amp, mirror: bool, step: float = 0.5,
                   hide: bool = False) -> None:
    """Write ``out_dir``/<case>.nii.gz for every case of ``group_inputs``, with the input's affine."""
    os.makedirs(out_dir, exist_ok=True)
    for case in progress_bar(sorted(cases), disable=hide, desc="cases"):
        image, spacing, affine = data.read_image_files(cases[case])
        label = predict_image(models, image, spacing, affine, plans, cfg, device, amp, mirror, step)
        data.write_label(label, affine, os.path.join(out_dir, f"{case}.nii.gz"))
