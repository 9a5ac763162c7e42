#!/usr/bin/env python
"""Train MedNeXt with the paper's recipe and validate it on whole volumes (console script ``mednext-train``).

    python train/run.py                       # CPU demo on the embedded default dataset
    python train/run.py --dataset DIR --preset paper --variant B --kernel 3 --fold all
    torchrun --nproc_per_node 4 train/run.py --dataset DIR --preset paper   # DDP

Prediction is ``mednext-predict`` (``predict.py``), data preparation ``mednext-prepare`` (``prepare.py``).
The recipe is in ``trainer.py``, the presets in ``presets.py``; ``--help`` lists the options.
"""
from __future__ import annotations

import argparse
import sys

import mednext_fast as mf
from mednext_fast.train.cli import HelpFormatter, exit_code
from mednext_fast.train.device import AMP_CHOICES
from mednext_fast.train.presets import PRESETS
from mednext_fast.train.schedule import PAPER
from mednext_fast.train.trainer import run_training


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mednext-train", formatter_class=HelpFormatter,
        description="Train MedNeXt (paper recipe) with cross-validation, then validate on full volumes. "
                    "With no arguments: a CPU-sized demo on the embedded default dataset (Colin27 brain "
                    "extraction when mricron-data is installed, else a synthetic task).",
        epilog="Prediction: `mednext-predict -i IN -o OUT -m RUN_DIR` (see `mednext-predict --help`). "
               "Multi-GPU: `torchrun --nproc_per_node N train/run.py ...` (DDP; NCCL on GPUs, gloo on CPU).")
    p.add_argument("--dataset", help="an nnU-Net v2 raw dataset folder (dataset.json, imagesTr/, labelsTr/), an "
                                     "MSD Task folder (converted), or a built-in name: colin27-brain (brain "
                                     "extraction, hemisphere split), colin27-head (the same, one whole-head "
                                     "case), colin27 (lobes), synthetic, synthetic-ct, synthetic-aniso. Default: "
                                     "colin27-brain when mricron-data is installed, else synthetic")
    p.add_argument("--output", help="run folder (default: runs/<dataset>/<variant>k<kernel>_<preset>, relative to "
                                    "the current folder)")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="run length and patch: 'paper' (128^3, 1000x250), 'demo' (CPU, shrunken model), "
                        "'tiny' (tests). Default: paper with --dataset on a GPU, else demo")
    p.add_argument("--variant", default="S", type=str.upper, choices=sorted(mf.VARIANTS), help="MedNeXt variant")
    p.add_argument("--kernel", default=3, type=int, choices=(3, 5, 7), help="depthwise kernel size")
    p.add_argument("--fold", nargs="+",
                   help="folds to train, as in nnU-Net: 0..4 of the 5-fold cross-validation (several: "
                        "--fold 0 1 2 3 4), or 'all' (one model on every case, no held-out validation). "
                        "Default: 0, or 'all' for a one-case dataset")
    p.add_argument("--epochs", type=int,
                   help="number of epochs (paper: 1000; demo: as many as fit --time-budget)")
    p.add_argument("--time-budget", type=float, metavar="MIN",
                   help="training minutes per fold for the demo preset: the epochs that fit at a measured "
                        "step time (default: the CPU budget's minutes; ignored with --epochs)")
    p.add_argument("--iters-per-epoch", type=int, help="training iterations per epoch (preset)")
    p.add_argument("--val-iters", type=int, help="validation batches per epoch for the pseudo-Dice (preset)")
    p.add_argument("--batch-size", type=int, help="patches per batch and process (default: planned, >= 2)")
    p.add_argument("--patch-size", type=int, nargs="+",
                   help="patch size, 1 or 3 ints divisible by 16 (default: planned from the median shape within "
                        "the preset's budget)")
    p.add_argument("--target-spacing", nargs="+",
                   help="resampling target: '1mm' (the paper), 'median' (nnU-Net's rule) or 1 or 3 numbers in mm "
                        "(default: paper 1mm; demo the median, coarsened to the CPU budget). The chosen plans and "
                        "why are in the log and plans.json")
    p.add_argument("--preprocessed", help="folder for the preprocessed cache (default: <output>/preprocessed)")
    p.add_argument("--workers", type=int, default=2, help="processes for preprocessing")
    p.add_argument("--lr", type=float, default=PAPER["lr"], help="initial learning rate (AdamW)")
    p.add_argument("--amp", choices=AMP_CHOICES,
                   help="mixed precision; fp16 uses a GradScaler. Default: bf16 on GPUs that support it, else off")
    p.add_argument("--checkpointing", action="store_true",
                   help="gradient checkpointing around every block (M and L use it by default in the paper "
                        "presets)")
    p.add_argument("--backend", default="auto", choices=mf.BACKENDS, help="block implementation")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--init-from", metavar="CKPT",
                   help="UpKern: initialise from a trained checkpoint (smaller kernels are resized)")
    p.add_argument("--resume", action="store_true", help="continue from checkpoint_latest.pt of each fold")
    p.add_argument("--overwrite", action="store_true", help="discard existing checkpoints in the run folder")
    p.add_argument("--seed", type=int, default=0, help="seed for model init and sampling")
    p.add_argument("--split-seed", type=int, default=12345, help="seed of the 5-fold split")
    p.add_argument("--no-deep-supervision", action="store_true", help="train on the full-resolution output only")
    p.add_argument("--batch-dice", action="store_true", help="Dice over batch and space together")
    p.add_argument("--mirror", choices=("on", "off"),
                   help="mirroring TTA (8 flips) in the final validation (preset: on; demo off)")
    p.add_argument("--no-final-validation", action="store_true", help="skip full-volume validation and metrics")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument("--threads", type=int,
                   help="CPU threads for torch (default: torch's choice, one per core)")
    p.add_argument("--no-progress", action="store_true", help="hide tqdm progress bars")
    return p


def main(argv=None) -> int:
    return exit_code(run_training, train_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
