#!/usr/bin/env python
"""Train MedNeXt with the paper's recipe, validate, and predict (mednext-fast issue 7).

    python train/run.py                       # CPU demo on the embedded default dataset (a few minutes)
    python train/run.py --dataset DIR --preset paper --variant B --kernel 3 --fold all
    torchrun --nproc_per_node 4 train/run.py --dataset DIR --preset paper   # DDP
    python train/run.py predict -i IN_DIR -o OUT_DIR -m RUN_DIR               # NIfTI in, labels out

Paper defaults (MedNeXt trainer on the nnU-Net protocol): patch 128^3, batch 2, 1000 epochs x 250
iterations, AdamW lr 1e-3 eps 1e-4 wd 3e-5, poly LR 0.9 per epoch, grad-norm clip 12, -Dice + CE
(background excluded, smooth 1e-5), deep supervision on all 5 outputs weighted 1, 1/2, ..., 1/16
normalised. Run ``python train/run.py --help`` and ``python train/run.py predict --help`` for options.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time

# Script use from a source checkout: the folder of this file is sys.path[0], which would expose our
# modules under generic top-level names; replace it by the repo root unless the package is installed.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or ".") == _HERE:
    sys.path.pop(0)
try:
    import mednext_fast  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(_HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import mednext_fast as mf  # noqa: E402
from mednext_fast.train import checkpointing as ckpt  # noqa: E402
from mednext_fast.train import data_bridge as data  # noqa: E402
from mednext_fast.train import metrics as metrics_mod  # noqa: E402
from mednext_fast.train.inference import predict_probabilities  # noqa: E402
from mednext_fast.train.logging_utils import RunLog, write_json  # noqa: E402
from mednext_fast.train.losses import DeepSupervisionLoss, DiceCELoss, ds_weights  # noqa: E402
from mednext_fast.train.schedule import PAPER, make_optimizer, poly_lr, set_lr  # noqa: E402

# Presets set the run length, patch and (for the CPU-sized ones) a shrunken model; explicit options win.
PRESETS = {
    "paper": dict(patch_size=[128, 128, 128], batch_size=2, epochs=1000, iters_per_epoch=250, val_iters=50,
                  target_spacing="1mm", mirror=True, model={}),
    # CPU demo: an 8-channel one-block model, no mirroring in the final validation, and for Colin27 3 mm
    # voxels (a hemisphere becomes ~30x72x60, so a 32^3 patch sees most of it): minutes on 2 cores. The
    # synthetic phantoms (64 mm) stay at 1 mm, where their thin vessel survives.
    "demo": dict(patch_size=[32, 32, 32], batch_size=2, epochs=20, iters_per_epoch=25, val_iters=6,
                 target_spacing={"colin27": [3.0, 3.0, 3.0], "*": "1mm"}, mirror=False,
                 model=dict(n_channels=8, block_counts=[1] * 9, exp_r=2, checkpoint_style=None)),
    "tiny": dict(patch_size=[32, 32, 32], batch_size=2, epochs=2, iters_per_epoch=3, val_iters=2,
                 target_spacing="1mm", mirror=True,
                 model=dict(n_channels=4, block_counts=[1] * 9, exp_r=2, checkpoint_style=None)),
}
PAPER_ITERS = 250  # iterations per epoch in the paper, for the epoch-time estimate
EMA_ALPHA = 0.9    # nnU-Net: ema = 0.9 * ema + 0.1 * new pseudo-Dice
SYNC_EVERY = 10    # iterations between loss read-backs (GPU syncs)


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------
class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' only for options that have a real default."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run.py", formatter_class=_Help,
        description="Train MedNeXt (paper recipe) with cross-validation, then validate on full volumes. "
                    "With no arguments: a CPU-sized demo on the embedded default dataset (Colin27 brain "
                    "extraction when mricron-data is installed, else a synthetic task).",
        epilog="Prediction: `run.py predict -i IN -o OUT -m RUN_DIR` (see `run.py predict --help`). "
               "Multi-GPU: `torchrun --nproc_per_node N train/run.py ...` (DDP; NCCL on GPUs, gloo on CPU).")
    p.add_argument("--dataset", help="an nnU-Net v2 raw dataset folder (dataset.json, imagesTr/, labelsTr/), an "
                                     "MSD Task folder (converted), or a built-in name: colin27, synthetic, "
                                     "synthetic-ct, synthetic-aniso. Default: colin27 when mricron-data is "
                                     "installed, else synthetic")
    p.add_argument("--output", help="run folder (default: runs/<dataset>/<variant>k<kernel>_<preset>, relative to the current folder)")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="run length and patch: 'paper' (128^3, 1000x250), 'demo' (CPU, shrunken model), "
                        "'tiny' (tests). Default: paper with --dataset on a GPU, else demo")
    p.add_argument("--variant", default="S", type=str.upper, choices=sorted(mf.VARIANTS), help="MedNeXt variant")
    p.add_argument("--kernel", default=3, type=int, choices=(3, 5, 7), help="depthwise kernel size")
    p.add_argument("--fold", default="0", help="cross-validation fold 0..4, or 'all'")
    p.add_argument("--epochs", type=int, help="number of epochs (preset)")
    p.add_argument("--iters-per-epoch", type=int, help="training iterations per epoch (preset)")
    p.add_argument("--val-iters", type=int, help="validation batches per epoch for the pseudo-Dice (preset)")
    p.add_argument("--batch-size", type=int, help="patches per batch and process (preset)")
    p.add_argument("--patch-size", type=int, nargs="+", help="patch size, 1 or 3 ints divisible by 16 (preset)")
    p.add_argument("--target-spacing", nargs="+",
                   help="resampling target: '1mm' (the paper), 'median' (nnU-Net's rule) or 3 numbers in mm "
                        "(preset: 1mm; demo: 3 mm for colin27)")
    p.add_argument("--preprocessed", help="folder for the preprocessed cache (default: <output>/preprocessed)")
    p.add_argument("--workers", type=int, default=2, help="processes for preprocessing")
    p.add_argument("--lr", type=float, default=PAPER["lr"], help="initial learning rate (AdamW)")
    p.add_argument("--amp", choices=("bf16", "fp16", "off"),
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
                   help="CPU threads for torch (default: 1 for the demo/tiny presets on CPU, whose small convs "
                        "gain little from threads and slow down badly when other jobs share the cores; else "
                        "torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide tqdm progress bars")
    return p


def predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py predict", formatter_class=_Help,
                                description="Segment a folder of NIfTI images with a trained run, ensembling "
                                            "folds by averaging probabilities; labels are written in each "
                                            "input's geometry with its affine.")
    p.add_argument("-i", "--input", required=True,
                   help="folder of <case>_0000.nii.gz (one file per channel, nnU-Net naming) or, for "
                        "single-channel models, any *.nii.gz")
    p.add_argument("-o", "--output", required=True, help="folder for <case>.nii.gz label maps")
    p.add_argument("-m", "--model", required=True, help="run folder written by training (holds plans.json)")
    p.add_argument("--folds", nargs="+", default=["all"], help="folds to ensemble, or 'all' trained ones")
    p.add_argument("--checkpoint", default="final", choices=("final", "best", "latest"),
                   help="which checkpoint of each fold to use")
    p.add_argument("--no-mirror", action="store_true", help="no mirroring TTA (8x faster)")
    p.add_argument("--step", type=float, default=0.5, help="sliding-window step as a fraction of the patch")
    p.add_argument("--amp", choices=("bf16", "fp16", "off"),
                   help="inference precision; default: bf16 on GPUs that support it, else off. On CPU, bf16 keeps "
                        "the C++ path in fp32 and runs its wide layers' GEMMs in bf16 where the CPU has native "
                        "bf16 (AMX / AVX512-BF16): 1.1-1.4x faster")
    p.add_argument("--backend", default="auto", choices=mf.BACKENDS, help="block implementation")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide tqdm progress bars")
    return p


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------
def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def amp_dtype(choice: str | None, device: torch.device):
    if choice is None:
        choice = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[choice], choice


def build_model(cfg: dict, backend: str = "auto") -> mf.MedNeXt:
    model = mf.create_mednext(cfg["variant"], cfg["in_channels"], cfg["n_classes"], kernel_size=cfg["kernel"],
                              deep_supervision=cfg["deep_supervision"], backend=backend, **cfg["model"])
    # The official state_dict's dummy_tensor never takes part in the forward; as a trainable parameter
    # it would break DDP's gradient reduction. It gets no gradient either way.
    model.dummy_tensor.requires_grad_(False)
    return model


def resolve_config(args, ds: data.RawDataset, on_gpu: bool) -> dict:
    preset_name = args.preset or ("paper" if args.dataset and on_gpu else "demo")
    preset = PRESETS[preset_name]
    patch = args.patch_size or preset["patch_size"]
    if len(patch) == 1:
        patch = patch * 3
    if len(patch) != 3 or any(p % 16 or p <= 0 for p in patch):
        raise SystemExit(f"--patch-size {patch}: need 1 or 3 positive sizes divisible by 16 (MedNeXt down-samples 4x)")
    model_cfg = dict(preset["model"])
    if args.checkpointing:
        model_cfg["checkpoint_style"] = "outside_block"
    if args.target_spacing:
        target = args.target_spacing[0] if len(args.target_spacing) == 1 else [float(t) for t in args.target_spacing]
    else:
        target = preset["target_spacing"]
        if isinstance(target, dict):  # keyed by the dataset actually used (colin27 falls back to synthetic)
            is_colin = str(ds.meta.get("name", "")).lower().startswith("colin27")
            target = target["colin27"] if is_colin else target["*"]
    mirror = preset["mirror"] if args.mirror is None else args.mirror == "on"
    return dict(preset=preset_name, variant=args.variant, target_spacing=target, mirror=mirror, kernel=args.kernel, patch_size=list(patch),
                batch_size=args.batch_size or preset["batch_size"], epochs=args.epochs or preset["epochs"],
                iters_per_epoch=args.iters_per_epoch or preset["iters_per_epoch"],
                val_iters=args.val_iters or preset["val_iters"], lr=args.lr, model=model_cfg,
                deep_supervision=not args.no_deep_supervision, batch_dice=args.batch_dice,
                in_channels=ds.in_channels, n_classes=ds.n_classes, seed=args.seed, split_seed=args.split_seed)


class Dist:
    """torchrun environment: rank, world size, and the process group (NCCL on GPUs, gloo on CPU)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.active = self.world > 1

    def init(self, device: torch.device) -> None:
        if self.active and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return tensor


def _bar(iterable=None, disable=False, **kwargs):
    from tqdm import tqdm
    return tqdm(iterable, disable=disable or None, leave=False, dynamic_ncols=True, **kwargs)


# ---------------------------------------------------------------------------------------------------
# Training of one fold
# ---------------------------------------------------------------------------------------------------
def train_fold(cfg: dict, args, plans: dict, preprocessed: str, split: dict, fold_dir: str,
               device: torch.device, env: Dist, log: RunLog) -> dict:
    torch.manual_seed(cfg["seed"])  # same initial weights on every rank (DDP broadcasts rank 0's anyway)
    np.random.seed(cfg["seed"])
    model = build_model(cfg, args.backend)
    if args.init_from:
        mf.upkern(model, args.init_from)
        log(f"initialised from {args.init_from} (UpKern)")
    model.to(device)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], lr=cfg["lr"])
    amp, amp_name = amp_dtype(args.amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    sampler = data.Batches(preprocessed, split["train"], plans, cfg["patch_size"], cfg["batch_size"],
                           augment=True, seed=cfg["seed"], rank=env.rank)
    # Validation patches: the same every epoch (fixed epoch index) so the curve shows the model, not the draw.
    val_sampler = data.Batches(preprocessed, split["val"], plans, cfg["patch_size"], cfg["batch_size"],
                               augment=False, seed=cfg["seed"] + 1, rank=env.rank)
    loss_fn = DeepSupervisionLoss(DiceCELoss(batch_dice=cfg["batch_dice"]),
                                  ds_weights(5) if cfg["deep_supervision"] else None)

    latest = os.path.join(fold_dir, ckpt.LATEST)
    start_epoch, best_ema, ema = 0, -math.inf, None
    if args.resume and os.path.isfile(latest):
        state = ckpt.load(latest)
        start_epoch = ckpt.restore(state, model, optimizer, scaler, sampler)
        best_ema, ema = state.get("best_ema", -math.inf), state.get("ema")
        log(f"resumed from {latest}: next epoch {start_epoch}, lr {state.get('lr')}")
    elif args.resume:
        log(f"--resume: no {latest} yet, starting at epoch 0")

    net = model
    if args.compile:
        net = torch.compile(net)
    if env.active:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)

    epochs, iters = cfg["epochs"], cfg["iters_per_epoch"]
    hide = args.no_progress or not env.main
    for epoch in range(start_epoch, epochs):
        lr = poly_lr(epoch, epochs, cfg["lr"])
        set_lr(optimizer, lr)
        t0 = time.time()
        net.train()
        losses = []
        bar = _bar(total=iters, disable=hide, desc=f"epoch {epoch}")
        for x, y in sampler.epoch(epoch, iters, device):  # y: label pyramid, full resolution first
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                out = net(x)
            loss = loss_fn([o.float() for o in out] if isinstance(out, list) else out.float(), y)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)  # clip the true gradient norm
                torch.nn.utils.clip_grad_norm_(model.parameters(), PAPER["grad_clip"])
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), PAPER["grad_clip"])
                optimizer.step()
            losses.append(loss.detach())
            bar.update(1)
            # Reading the loss waits for the GPU; do it every few steps only, so the CPU can queue ahead.
            if len(losses) % SYNC_EVERY == 0 or len(losses) == iters:
                recent = losses[-1].item()
                if not math.isfinite(recent):
                    raise FloatingPointError(f"epoch {epoch}: non-finite training loss {recent}; try "
                                             "--amp off or a lower --lr")
                bar.set_postfix(loss=f"{recent:.4f}")
        bar.close()
        train_time = time.time() - t0
        val_loss, dice_per_class = validate_patches(net, model, val_sampler, loss_fn, cfg, device, amp, env)
        pseudo = float(np.nanmean(dice_per_class)) if np.any(~np.isnan(dice_per_class)) else 0.0
        ema = pseudo if ema is None else EMA_ALPHA * ema + (1 - EMA_ALPHA) * pseudo
        mean_loss = float(torch.stack(losses).float().mean())
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"epoch {epoch}: non-finite training loss; try --amp off or a lower --lr")
        train_loss = float(env.sum(torch.tensor([mean_loss], dtype=torch.float64))[0] / env.world)
        epoch_time = time.time() - t0
        if env.main:
            log(f"epoch {epoch}/{epochs}: train_loss {train_loss:.4f} val_loss {val_loss:.4f} pseudo_dice "
                f"{[round(float(d), 4) for d in dice_per_class]} ema {ema:.4f} lr {lr:.3e} epoch_time "
                f"{epoch_time:.1f}s ({iters} it; {train_time / iters * PAPER_ITERS:.0f}s per {PAPER_ITERS}-it "
                f"paper epoch, {amp_name})")
            log.record(epoch, train_loss=train_loss, val_loss=val_loss, pseudo_dice=pseudo, ema_pseudo_dice=ema,
                       lr=lr, epoch_time=epoch_time)
            improved = ema > best_ema
            best_ema = max(best_ema, ema)
            extra = dict(config=cfg, ema=ema, best_ema=best_ema)
            ckpt.save(latest, model, optimizer, scaler, epoch + 1, sampler, **extra)
            if improved:
                ckpt.save(os.path.join(fold_dir, ckpt.BEST), model, epoch=epoch + 1, **extra)
                log(f"new best EMA pseudo-Dice {ema:.4f}")
            log.plot()  # after the checkpoints: the plot is the least important write
        env.barrier()

    if env.main:
        ckpt.save(os.path.join(fold_dir, ckpt.FINAL), model, epoch=epochs, config=cfg, best_ema=best_ema)
    if env.active:
        check_ddp_consistency(model, env, fold_dir)
    env.barrier()
    return dict(model=model, amp=amp)


@torch.no_grad()
def validate_patches(net, model, sampler, loss_fn, cfg, device, amp, env: Dist):
    """Mean loss and per-foreground-class pseudo-Dice (tp/fp/fn summed over all patches and ranks)."""
    net.eval()
    k = cfg["n_classes"]
    stats = torch.zeros(3, k, dtype=torch.float64)
    loss_sum = torch.zeros(2, dtype=torch.float64)
    for x, y in sampler.epoch(0, cfg["val_iters"], device):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = model(x)  # the bare model: DDP's forward would expect a backward
        out = [o.float() for o in out] if isinstance(out, list) else out.float()
        loss_sum += torch.tensor([loss_fn(out, y).item(), 1.0], dtype=torch.float64)
        pred = (out[0] if isinstance(out, list) else out).argmax(1)
        full = y[0][:, 0]
        for c in range(1, k):
            p, t = pred == c, full == c
            stats[0, c] += (p & t).sum().item()
            stats[1, c] += (p & ~t).sum().item()
            stats[2, c] += (~p & t).sum().item()
    stats, loss_sum = env.sum(stats), env.sum(loss_sum)
    tp, fp, fn = stats[:, 1:]
    denom = 2 * tp + fp + fn
    dice = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))
    return float(loss_sum[0] / loss_sum[1]), dice.numpy()


def check_ddp_consistency(model, env: Dist, fold_dir: str) -> None:
    """Compare every rank's weights with rank 0's; record the largest difference in ddp_check.json."""
    dev = next(model.parameters()).device  # gloo gathers CPU tensors, NCCL device tensors
    flat = torch.cat([p.detach().float().reshape(-1) for p in model.parameters()]).to(dev)
    gathered = [torch.zeros_like(flat) for _ in range(env.world)]
    dist.all_gather(gathered, flat)
    gathered = [g.cpu() for g in gathered]
    diff = max(float((g - gathered[0]).abs().max()) for g in gathered)
    if env.main:
        write_json(os.path.join(fold_dir, "ddp_check.json"), dict(world_size=env.world, max_abs_diff=diff))
        if diff != 0:
            print(f"WARNING: DDP ranks ended with different weights (max abs diff {diff})", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------
# Full-volume validation and prediction
# ---------------------------------------------------------------------------------------------------
def final_validation(models, cfg, ds: data.RawDataset, plans, case_names, out_dir, device, amp, mirror: bool,
                     env: Dist, log: RunLog, hide: bool) -> dict | None:
    """Predict each validation case from its raw files, export to the original geometry, score it."""
    os.makedirs(out_dir, exist_ok=True)
    mine = case_names[env.rank::env.world]
    for name in _bar(mine, disable=hide, desc="validation"):
        image, _, spacing, affine = data.read_raw_case(ds, name, with_label=False)
        label = predict_image(models, image, spacing, plans, cfg, device, amp, mirror)
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
    summary = dict(mean=metrics_mod.summarize(per_case), per_case=per_case,
                   conventions="DSC NaN if both empty; NSD at 1 mm and HD95 (max of the two directed 95th "
                               "percentiles) on edge voxels, MONAI default; see train/metrics.py")
    write_json(os.path.join(out_dir, "summary.json"), summary)
    with open(os.path.join(out_dir, "summary.txt"), "w") as handle:
        handle.write(metrics_mod.format_table(per_case))
    fg = summary["mean"]["foreground_mean"]
    log(f"validation ({len(case_names)} cases): mean Dice {fg['dice']:.4f} NSD@1mm {fg['nsd']:.4f} "
        f"HD95 {fg['hd95']:.2f} mm -> {out_dir}/summary.json")
    return summary


def predict_image(models, image, spacing, plans, cfg, device, amp, mirror: bool, step: float = 0.5,
                  progress=None) -> np.ndarray:
    pre, props = data.preprocess_image(image, spacing, plans)
    probs = predict_probabilities(models, pre, cfg["patch_size"], cfg["n_classes"], step=step,
                                  mirror_axes=(0, 1, 2) if mirror else (), device=device, amp_dtype=amp,
                                  progress=progress)
    return data.export(probs, props, plans)


def _folds(arg: str, n: int) -> list:
    if arg == "all":
        return list(range(n))
    try:
        fold = int(arg)
    except ValueError:
        raise SystemExit(f"--fold must be 0..{n - 1} or 'all', got {arg!r}")
    if not 0 <= fold < n:
        raise SystemExit(f"--fold {fold}: this dataset has {n} folds (0..{n - 1})")
    return [fold]


# ---------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------
def main_train(argv) -> int:
    args = train_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = Dist()
    device = pick_device(args.device, env.local_rank)
    env.init(device)
    default_output = args.output is None
    # Built-in datasets are generated (and MSD folders converted) by rank 0 first; the others then reuse them.
    name = args.dataset or data.DEFAULT_DATASET
    if env.main:
        root = data.resolve_dataset(name, os.path.join("runs", "data"))
    env.barrier()
    if not env.main:
        root = data.resolve_dataset(name, os.path.join("runs", "data"), log=lambda *a: None)
    ds = data.open_dataset(root)
    description = f"{name} ({root})"
    cfg = resolve_config(args, ds, device.type == "cuda")
    if args.threads is None and device.type == "cpu" and cfg["preset"] in ("demo", "tiny"):
        torch.set_num_threads(1)
    out = args.output or os.path.join("runs", os.path.basename(os.path.normpath(name)),
                                      f"{cfg['variant']}k{cfg['kernel']}_{cfg['preset']}")
    log = RunLog(out, enabled=env.main)
    splits_path = os.path.join(out, "splits_final.json")
    if os.path.isfile(splits_path):
        with open(splits_path) as handle:
            splits = json.load(handle)
        if sorted(splits[0]["train"] + splits[0]["val"]) != sorted(ds.cases):
            raise SystemExit(f"{splits_path} lists other cases than {root}; use another --output")
    elif os.path.isfile(os.path.join(root, "splits_final.json")):  # the dataset's own split (e.g. Colin27)
        with open(os.path.join(root, "splits_final.json")) as handle:
            splits = json.load(handle)
    else:
        splits = data.make_splits(ds.cases, 5, cfg["split_seed"])
    folds = _folds(args.fold, len(splits))

    existing = [f for f in folds if os.path.isfile(os.path.join(out, f"fold_{f}", ckpt.LATEST))]
    if existing and not args.resume:
        if args.overwrite or default_output:
            if env.main:
                for f in existing:
                    shutil.rmtree(os.path.join(out, f"fold_{f}"))
                for stale in ("progress.json", "progress.png", "training_log.txt"):
                    if os.path.isfile(os.path.join(out, stale)):
                        os.remove(os.path.join(out, stale))
                log.history = {}
            env.barrier()
        else:
            raise SystemExit(f"{out} already holds checkpoints of fold(s) {existing}; pass --resume to continue "
                             "or --overwrite to start again")
    target = cfg["target_spacing"]
    preprocessed = args.preprocessed or os.path.join(out, "preprocessed")
    # Rank 0 preprocesses; the others then find every case cached.
    if env.main:
        plans = data.prepare(ds, preprocessed, cfg["patch_size"], cfg["batch_size"], target, args.workers,
                             progress=not args.no_progress)
    env.barrier()
    if not env.main:
        plans = data.prepare(ds, preprocessed, cfg["patch_size"], cfg["batch_size"], target, 0, progress=False)
    if env.main:
        os.makedirs(out, exist_ok=True)
        write_json(splits_path, splits)
        write_json(os.path.join(out, "plans.json"), dict(plans=plans, config=cfg))
    amp_name = amp_dtype(args.amp, device)[1]
    log(f"dataset {description}: {len(ds.cases)} cases, {ds.n_classes} classes, target spacing "
        f"{plans['target_spacing']}; {cfg['preset']} preset: MedNeXt-{cfg['variant']} k{cfg['kernel']} "
        f"{cfg['model'] or '(paper widths)'}, patch {cfg['patch_size']}, batch {cfg['batch_size']} x "
        f"{env.world} process(es), {cfg['epochs']} epochs x {cfg['iters_per_epoch']} it, device {device}, "
        f"amp {amp_name}, {torch.get_num_threads()} CPU thread(s), folds {folds} -> {out}")
    for fold in folds:
        fold_dir = os.path.join(out, f"fold_{fold}")
        os.makedirs(fold_dir, exist_ok=True)
        fold_log = RunLog(fold_dir, enabled=env.main)
        fold_log(f"fold {fold}: {len(splits[fold]['train'])} training, {len(splits[fold]['val'])} validation cases")
        t0 = time.time()
        result = train_fold(cfg, args, plans, preprocessed, splits[fold], fold_dir, device, env, fold_log)
        fold_log(f"fold {fold}: training took {time.time() - t0:.1f}s")
        if not args.no_final_validation:
            final_validation([result["model"]], cfg, ds, plans, splits[fold]["val"],
                             os.path.join(fold_dir, "validation"), device, result["amp"], cfg["mirror"],
                             env, fold_log, args.no_progress or not env.main)
    if env.active:
        dist.destroy_process_group()
    return 0


def _group_inputs(folder: str, in_channels: int) -> dict:
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


def main_predict(argv) -> int:
    args = predict_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    plans_path = os.path.join(args.model, "plans.json")
    if not os.path.isfile(plans_path):
        raise SystemExit(f"{args.model}: no plans.json; -m must be a run folder written by training")
    with open(plans_path) as handle:
        saved = json.load(handle)
    plans, cfg = saved["plans"], saved["config"]
    device = pick_device(args.device)
    amp = amp_dtype(args.amp, device)[0]
    name = {"final": ckpt.FINAL, "best": ckpt.BEST, "latest": ckpt.LATEST}[args.checkpoint]
    if args.folds == ["all"]:
        folds = sorted(int(d[5:]) for d in os.listdir(args.model)
                       if d.startswith("fold_") and os.path.isfile(os.path.join(args.model, d, name)))
    else:
        folds = [int(f) for f in args.folds]
    if not folds:
        raise SystemExit(f"{args.model}: no fold_*/{name} found")
    models = []
    for fold in folds:
        path = os.path.join(args.model, f"fold_{fold}", name)
        model = build_model(cfg, args.backend)
        model.load_state_dict(mf.load_state_dict_file(path))
        models.append(model.to(device).eval())
    cases = _group_inputs(args.input, cfg["in_channels"])
    os.makedirs(args.output, exist_ok=True)
    print(f"predicting {len(cases)} case(s) with fold(s) {folds} ({args.checkpoint} checkpoints), "
          f"mirroring {'off' if args.no_mirror else 'on'}", flush=True)
    for case in _bar(sorted(cases), disable=args.no_progress, desc="cases"):
        image, spacing, affine = data.read_image_files(cases[case])
        label = predict_image(models, image, spacing, plans, cfg, device, amp, not args.no_mirror, args.step)
        data.write_label(label, affine, os.path.join(args.output, f"{case}.nii.gz"))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "predict":
            return main_predict(argv[1:])
        if argv and argv[0] == "train":
            argv = argv[1:]
        return main_train(argv)
    except data.DatasetError as err:  # bad input data: the message names the case and file
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
