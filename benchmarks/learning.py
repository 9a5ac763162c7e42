"""Learning benchmark: the default CPU training on the embedded real data, Dice against wall time, into the
results CSV, so a regression anywhere in the pipeline (plans, sampling, augmentation, model, prediction) shows
as a number.

    python -m benchmarks.learning                              # all tasks, the default time budget
    python -m benchmarks.learning --tasks colin27-brain --time-budget 4 --csv /tmp/scratch.csv

Tasks (Debian mricron-data; see train/colin27.py, train/inia19.py):
  colin27-brain        brain extraction, train on the left hemisphere, Dice on the right one
  colin27-lobes        the 7 lobe classes, same hemisphere split
  colin27-head-inia19  brain extraction trained on the whole Colin27 head (one case: fold 'all'), Dice on
                       another subject, the INIA19 macaque brain at human scale, and on the other held-out
                       cases of benchmarks/held_out.py (MNI152 when found, Colin27 warped, in P-I-L voxel
                       order, skull-stripped), no mirroring; also the time to predict a whole 1 mm head
                       (Colin27, 181x217x181) with and without mirroring

Each task runs ``mednext-train --dataset NAME`` with no tuning option (``--time-budget`` only when given) in
its own process. Rows (one per task, suite 'learning'; one per prediction, suite 'predict'): ``median_ms`` is
the training (or prediction) wall time, ``extra`` holds the Dice, the plans used and the per-epoch curve.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks import device_info, store

TASKS = {
    "colin27-brain": dict(dataset="colin27-brain", held_out="right hemisphere (fold 0 validation)"),
    "colin27-lobes": dict(dataset="colin27", held_out="right hemisphere (fold 0 validation)"),
    "colin27-head-inia19": dict(dataset="colin27-head", held_out="INIA19 macaque brain at human scale"),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.learning", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {', '.join(TASKS)}")
    p.add_argument("--time-budget", type=float, metavar="MIN",
                   help="training minutes per task (default: the demo preset's CPU budget)")
    p.add_argument("--out", default=os.path.join("runs", "learning"), help="folder for the runs")
    p.add_argument("--csv", default=store.DEFAULT_CSV, help="results CSV to append to")
    p.add_argument("--note", help="free text recorded with the rows")
    args = p.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        p.error(f"--tasks: unknown {unknown}; choose from {', '.join(TASKS)}")
    return args


def train(task: str, args) -> tuple[str, float]:
    """Run the default training of ``task`` in its own process; (run folder, wall seconds)."""
    out = os.path.abspath(os.path.join(args.out, task))
    cmd = [sys.executable, "-m", "mednext_fast.train.run", "--dataset", TASKS[task]["dataset"], "--output", out,
           "--overwrite", "--no-progress"]
    if args.time_budget is not None:
        cmd += ["--time-budget", str(args.time_budget)]
    print(f"[{task}] {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    # cwd: the built-in datasets are generated under <cwd>/runs/data
    subprocess.run(cmd, check=True, cwd=os.path.abspath(args.out))
    return out, time.perf_counter() - t0


def _training_seconds(run: str, fold: str) -> float:
    """The trainer's own 'training took' time of a fold (excludes preprocessing and the final validation)."""
    with open(os.path.join(run, f"fold_{fold}", "training_log.txt")) as handle:
        lines = [line for line in handle if "training took" in line]
    return float(lines[-1].rsplit("took", 1)[1].strip().rstrip("s"))


def _curve(run: str, fold: str) -> list:
    """[(cumulative epoch seconds, EMA pseudo-Dice)] per epoch."""
    with open(os.path.join(run, f"fold_{fold}", "progress.json")) as handle:
        history = json.load(handle)
    times = np.cumsum(history["epoch_time"])
    return [[round(float(t), 1), round(float(d), 4)] for t, d in zip(times, history["ema_pseudo_dice"])]


def _plans(run: str) -> dict:
    with open(os.path.join(run, "plans.json")) as handle:
        cfg = json.load(handle)["config"]
    return {k: cfg.get(k) for k in ("preset", "target_spacing", "patch_size", "batch_size", "epochs",
                                    "iters_per_epoch", "step_seconds", "time_budget_min", "model")}


def held_out_dice_validation(run: str) -> dict:
    with open(os.path.join(run, "fold_0", "validation", "summary.json")) as handle:
        fg = json.load(handle)["mean"]["foreground_mean"]
    return dict(dice=round(fg["dice"], 4), hd95_mm=round(fg["hd95"], 2), nsd=round(fg["nsd"], 4),
                hd95_undefined=fg["hd95_undefined"])


def predict_timed(run: str, images: str, out: str, mirror: bool) -> float:
    """Seconds to segment the folder ``images`` with the run's fold 'all' in this process (models loaded)."""
    import torch

    from mednext_fast.train import predictor
    plans, cfg = predictor.load_run(run)
    models = predictor.load_models(run, cfg, ["all"])
    cases = predictor.group_inputs(images, cfg["in_channels"])
    t0 = time.perf_counter()
    predictor.predict_folder(models, cases, out, plans, cfg, torch.device("cpu"), None, mirror, hide=True)
    return time.perf_counter() - t0


def head_to_held_out(run: str) -> tuple[dict, list]:
    """Dice on every held-out case of ``benchmarks.held_out`` (INIA19 first: the row's ``dice``), and the
    prediction rows of a whole 1 mm Colin27 head (mirroring off and on)."""
    import torch

    from benchmarks import held_out
    from mednext_fast.train import colin27
    from mednext_fast.train import dataset_io as dio
    from mednext_fast.train.metrics import dice
    work = os.path.join(run, "held_out")
    scores = {}
    for name, (images, label) in held_out.write_cases(work).items():
        predict_timed(run, images, os.path.join(work, f"{name}_pred"), mirror=False)
        pred, _, _ = dio.read_volume(os.path.join(work, f"{name}_pred", f"{name}.nii.gz"))
        ref, _, _ = dio.read_volume(label)
        scores[name] = round(dice(pred > 0, ref > 0), 4)
    result = dict(dice=scores.get("inia19"), held_out_dice=scores)
    t1, _, affine = colin27.build_label()
    head = os.path.join(work, "colin27_1mm")
    dio.write_volume(t1, affine, os.path.join(head, "colin27_0000.nii.gz"))
    rows = []
    for mirror in (False, True):
        seconds = predict_timed(run, head, os.path.join(work, "colin27_pred"), mirror)
        rows.append(dict(suite="predict", mode="mirror" if mirror else "no-mirror", column="auto",
                         median_ms=round(seconds * 1e3, 1), runs=1,
                         extra=dict(image="Colin27 T1 181x217x181 at 1 mm", threads=torch.get_num_threads(),
                                    plans=_plans(run))))
    return result, rows


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    env = device_info.row_environment("cpu", device_info.command_line("benchmarks.learning", argv), note=args.note)
    for task in args.tasks:
        run, wall = train(task, args)
        fold = "all" if task == "colin27-head-inia19" else "0"
        extra_rows = []
        if task == "colin27-head-inia19":
            result, extra_rows = head_to_held_out(run)
        else:
            result = held_out_dice_validation(run)
        plans = _plans(run)
        row = dict(env, suite="learning", mode=task, variant="S", kernel=3, batch=plans["batch_size"],
                   dtype="fp32", column=plans["preset"], median_ms=round(_training_seconds(run, fold) * 1e3, 1),
                   runs=1, extra=dict(result, held_out=TASKS[task]["held_out"], process_wall_s=round(wall, 1),
                                      plans=plans, curve=_curve(run, fold)))
        rows = [row] + [dict(env, variant="S", kernel=3, dtype="fp32", **r) for r in extra_rows]
        store.append(rows, args.csv)
        print(f"[{task}] held-out Dice {result['dice']} after {row['median_ms'] / 1e3:.0f} s of training "
              f"({plans['epochs']} epochs, spacing {plans['target_spacing']}, patch {plans['patch_size']})"
              + "".join(f"; {k} {v}" for k, v in result.get("held_out_dice", {}).items())
              + "".join(f"; predict 1 mm head {r['mode']} {r['median_ms'] / 1e3:.1f} s" for r in extra_rows),
              flush=True)
    print(f"rows appended to {args.csv} (run {env['run']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
