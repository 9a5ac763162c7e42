#!/usr/bin/env python
"""Segment a folder of NIfTI images with a trained run (console script ``mednext-predict``).

    mednext-predict -i IN_DIR -o OUT_DIR -m RUN_DIR          # or: python train/predict.py ...
"""
from __future__ import annotations

import argparse
import sys

import torch

import mednext_fast as mf
from mednext_fast.train import predictor
from mednext_fast.train.cli import HelpFormatter, exit_code
from mednext_fast.train.data_bridge import FOLD_ALL
from mednext_fast.train.device import AMP_CHOICES, amp_dtype, pick_device


def predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mednext-predict", formatter_class=HelpFormatter,
                                description="Segment a folder of NIfTI images with a trained run, ensembling "
                                            "folds by averaging probabilities; labels are written in each "
                                            "input's geometry with its affine.")
    p.add_argument("-i", "--input", required=True,
                   help="folder of <case>_0000.nii.gz (one file per channel, nnU-Net naming) or, for "
                        "single-channel models, any *.nii.gz")
    p.add_argument("-o", "--output", required=True, help="folder for <case>.nii.gz label maps")
    p.add_argument("-m", "--model", required=True, help="run folder written by training (holds plans.json)")
    p.add_argument("--folds", nargs="+",
                   help="folds to ensemble: numbers of cross-validation folds and/or 'all' (the model trained on "
                        "every case, nnU-Net's fold 'all'). Default: every trained cross-validation fold, else "
                        "'all'")
    p.add_argument("--checkpoint", default="final", choices=tuple(predictor.CHECKPOINTS),
                   help="which checkpoint of each fold to use")
    p.add_argument("--no-mirror", action="store_true",
                   help="no mirroring TTA: one forward per window instead of 8 (the 8 flips cost 8x the network "
                        "time; docs/training.md has measured times)")
    p.add_argument("--step", type=float, default=0.5, help="sliding-window step as a fraction of the patch")
    p.add_argument("--amp", choices=AMP_CHOICES,
                   help="inference precision; default: bf16 on GPUs that support it, else off. On CPU, bf16 keeps "
                        "the C++ path in fp32 and runs its wide layers' GEMMs in bf16 where the CPU has native "
                        "bf16 (AMX / AVX512-BF16)")
    p.add_argument("--backend", default="auto", choices=mf.BACKENDS, help="block implementation")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide tqdm progress bars")
    return p


def predict(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    plans, cfg = predictor.load_run(args.model)
    device = pick_device(args.device)
    amp = amp_dtype(args.amp, device)[0]
    trained = predictor.trained_folds(args.model, args.checkpoint)
    if args.folds is None:
        folds = [f for f in trained if f != FOLD_ALL] or trained
    else:
        folds = [f if f == FOLD_ALL else int(f) if f.isdigit() else f for f in args.folds]
        missing = [f for f in folds if f not in trained]
        if missing:
            raise SystemExit(f"{args.model}: fold(s) {missing} have no {args.checkpoint} checkpoint; trained: "
                             f"{trained or 'none'}")
    if not folds:
        raise SystemExit(f"{args.model}: no fold_*/{predictor.CHECKPOINTS[args.checkpoint]} found")
    models = predictor.load_models(args.model, cfg, folds, args.checkpoint, args.backend, device)
    cases = predictor.group_inputs(args.input, cfg["in_channels"])
    print(f"predicting {len(cases)} case(s) with fold(s) {folds} ({args.checkpoint} checkpoints), "
          f"mirroring {'off' if args.no_mirror else 'on'}", flush=True)
    predictor.predict_folder(models, cases, args.output, plans, cfg, device, amp, not args.no_mirror, args.step,
                             hide=args.no_progress)
    return 0


def main(argv=None) -> int:
    return exit_code(predict, predict_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
