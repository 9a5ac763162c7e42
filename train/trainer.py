"""Training with the paper's recipe: a whole run (dataset, split, preprocessing, folds) and one fold
(the loop, the per-epoch patch validation, checkpoints).

Paper defaults (MedNeXt trainer on the nnU-Net protocol): AdamW lr 1e-3 eps 1e-4 wd 3e-5, poly LR 0.9
per epoch, grad-norm clip 12, -Dice + CE (background excluded, smooth 1e-5), deep supervision on all 5
outputs weighted 1, 1/2, ..., 1/16 normalised. After each epoch the EMA of the pseudo-Dice decides the
best checkpoint, as in nnU-Net.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time

import numpy as np
import torch

import mednext_fast as mf
from mednext_fast.atomic import write_json
from mednext_fast.train import checkpointing as ckpt
from mednext_fast.train import data_bridge as data
from mednext_fast.train.ddp import Dist, check_ddp_consistency
from mednext_fast.train.device import amp_dtype, keep_freed_memory, memory_format, pick_device
from mednext_fast.train.logging_utils import RunLog, progress_bar
from mednext_fast.train.losses import DeepSupervisionLoss, DiceCELoss, ds_weights
from mednext_fast.train.predictor import final_validation
from mednext_fast.train.planning import fit_epochs
from mednext_fast.train.presets import build_model, preset_name, resolve_config
from mednext_fast.train.schedule import PAPER, make_optimizer, poly_lr, set_lr

TIMING_WARMUP, TIMING_STEPS = 2, 3  # training steps that measure the step time for a time budget
PAPER_ITERS = 250  # iterations per epoch in the paper, for the epoch-time estimate
EMA_ALPHA = 0.9    # nnU-Net: ema = 0.9 * ema + 0.1 * new pseudo-Dice
SYNC_EVERY = 10    # iterations between loss read-backs (GPU syncs)
STALE_RUN_FILES = ("progress.json", "progress.png", "training_log.txt")


# ---------------------------------------------------------------------------------------------------
# A whole run
# ---------------------------------------------------------------------------------------------------
def run_training(args) -> int:
    """Train (and validate) the folds ``args.fold`` of a run; ``args`` are run.py's training options."""
    if args.threads:
        torch.set_num_threads(args.threads)
    env = Dist()
    device = pick_device(args.device, env.local_rank)
    heap_kept = device.type == "cpu" and keep_freed_memory()
    env.init(device)
    # Built-in datasets are generated (and MSD folders converted) by rank 0 first; the others then reuse them.
    name = args.dataset or data.DEFAULT_DATASET
    if env.main:
        root = data.resolve_dataset(name, os.path.join("runs", "data"))
    env.barrier()
    if not env.main:
        root = data.resolve_dataset(name, os.path.join("runs", "data"), log=lambda *a: None)
    ds = data.open_dataset(root)
    on_gpu = device.type == "cuda"
    out = args.output or os.path.join("runs", os.path.basename(os.path.normpath(name)),
                                      f"{args.variant}k{args.kernel}_{preset_name(args, on_gpu)}")
    log = RunLog(out, enabled=env.main)
    folds = select_folds(args.fold, len(ds.cases), log)
    # The cross-validation split exists only where it is used: a one-case dataset has none.
    splits = None
    if any(f != data.FOLD_ALL for f in folds):
        splits = data.run_splits(ds, out, args.split_seed)
        for fold in folds:
            if fold != data.FOLD_ALL and not 0 <= fold < len(splits):
                raise SystemExit(f"--fold {fold}: this dataset's split has {len(splits)} folds "
                                 f"(0..{len(splits) - 1}), or use 'all'")
    _clear_previous_run(out, folds, args, env, log)

    preprocessed = args.preprocessed or os.path.join(out, "preprocessed")
    # Rank 0 fingerprints and preprocesses; the others then find both cached.
    if env.main:
        fingerprint = data.fingerprint(ds, preprocessed, args.workers, progress=not args.no_progress)
    env.barrier()
    if not env.main:
        fingerprint = data.fingerprint(ds, preprocessed, 0, progress=False)
    cfg = resolve_config(args, ds, on_gpu, fingerprint)
    if env.main:
        plans = data.prepare(ds, preprocessed, cfg["patch_size"], cfg["batch_size"], cfg["target_spacing"],
                             args.workers, progress=not args.no_progress, fingerprint=fingerprint)
    env.barrier()
    if not env.main:
        plans = data.prepare(ds, preprocessed, cfg["patch_size"], cfg["batch_size"], cfg["target_spacing"], 0,
                             progress=False, fingerprint=fingerprint)
    if cfg["epochs"] is None:
        _fit_epochs_to_budget(cfg, args, out, plans, preprocessed, ds.cases, device, env)
    if env.main:
        os.makedirs(out, exist_ok=True)
        if splits is not None:
            write_json(os.path.join(out, "splits_final.json"), splits)
        write_json(os.path.join(out, "plans.json"), dict(plans=plans, config=cfg))
    log(f"dataset {name} ({root}): {len(ds.cases)} cases, {ds.n_classes} classes; {cfg['preset']} preset: "
        f"MedNeXt-{cfg['variant']} k{cfg['kernel']} {cfg['model'] or '(paper widths)'}, "
        f"{cfg['epochs']} epochs x {cfg['iters_per_epoch']} it x {env.world} process(es), device {device}, "
        f"amp {amp_dtype(args.amp, device)[1]}, {torch.get_num_threads()} CPU thread(s)"
        f"{', freed memory kept in the heap' if heap_kept else ''}, folds {folds} -> {out}")
    for reason in cfg["plan_reasons"]:
        log(f"plans: {reason}")
    for fold in folds:
        fold_dir = os.path.join(out, f"fold_{fold}")
        os.makedirs(fold_dir, exist_ok=True)
        fold_log = RunLog(fold_dir, enabled=env.main)
        if fold == data.FOLD_ALL:
            # nnU-Net's fold 'all': every case trains; the per-epoch pseudo-Dice is taken on training patches.
            split = dict(train=sorted(ds.cases), val=sorted(ds.cases))
            fold_log(f"fold all: {len(ds.cases)} training case(s), no held-out validation")
        else:
            split = splits[fold]
            fold_log(f"fold {fold}: {len(split['train'])} training, {len(split['val'])} validation cases")
        t0 = time.time()
        result = train_fold(cfg, args, plans, preprocessed, split, fold_dir, device, env, fold_log)
        fold_log(f"fold {fold}: training took {time.time() - t0:.1f}s")
        if not args.no_final_validation and fold != data.FOLD_ALL:
            final_validation([result["model"]], cfg, ds, plans, split["val"],
                             os.path.join(fold_dir, "validation"), device, result["amp"], cfg["mirror"],
                             env, fold_log, args.no_progress or not env.main)
    env.close()
    return 0


def select_folds(requested, n_cases: int, log=print) -> list:
    """The folds to train, as nnU-Net names them: 0..4 of the cross-validation, or 'all' (one model on every
    case, nothing held out). Default: fold 0, or 'all' for a one-case dataset (validation needs two)."""
    if requested is None:
        if n_cases < 2:
            log("the dataset has one training case: training fold 'all' on it (validation needs >= 2 cases)")
            return [data.FOLD_ALL]
        return [0]
    folds = []
    for value in requested:
        if value == data.FOLD_ALL:
            fold = data.FOLD_ALL
        else:
            try:
                fold = int(value)
            except ValueError:
                raise SystemExit(f"--fold: each value must be a fold number or 'all', got {value!r}") from None
            if n_cases < 2:
                raise SystemExit(f"--fold {fold}: cross-validation needs at least 2 cases and this dataset has "
                                 f"{n_cases}; train on it with --fold all")
        if fold not in folds:
            folds.append(fold)
    return folds


def _recipe(model, cfg: dict, device, amp) -> tuple:
    """(optimizer, GradScaler or None, loss) of the paper's recipe for ``model``."""
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], lr=cfg["lr"])
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    loss_fn = DeepSupervisionLoss(DiceCELoss(batch_dice=cfg["batch_dice"]),
                                  ds_weights(5) if cfg["deep_supervision"] else None)
    return optimizer, scaler, loss_fn


def _fit_epochs_to_budget(cfg: dict, args, out: str, plans: dict, preprocessed: str, cases, device, env) -> None:
    """Set ``cfg['epochs']`` to what fits its time budget: a resumed run keeps the epochs it was planned with;
    a new one times a few real training steps (sampling and augmentation included) of a throwaway model."""
    saved = os.path.join(out, "plans.json")
    if args.resume and os.path.isfile(saved):
        with open(saved) as handle:
            epochs = json.load(handle)["config"].get("epochs")
        if epochs:
            cfg["epochs"] = int(epochs)
            cfg["plan_reasons"][-1] = f"epochs {epochs}: kept from the run being resumed"
            return
    model = build_model(cfg, args.backend).to(device, memory_format=memory_format(device))
    amp = amp_dtype(args.amp, device)[0]
    optimizer, scaler, loss_fn = _recipe(model, cfg, device, amp)
    sampler = data.Batches(preprocessed, sorted(cases), plans, cfg["patch_size"], cfg["batch_size"], augment=True,
                           seed=cfg["seed"] + 7, rank=env.rank)
    step = (model, model, sampler, optimizer, scaler, loss_fn)
    _train_epoch(*step, 0, TIMING_WARMUP, device, amp, hide=True)
    t0 = time.perf_counter()
    _train_epoch(*step, 1, TIMING_STEPS, device, amp, hide=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - t0) / TIMING_STEPS
    seconds = float(env.sum(torch.tensor([seconds], dtype=torch.float64))[0]) / env.world  # one value on all ranks
    cfg["step_seconds"] = round(seconds, 4)
    cfg["epochs"] = fit_epochs(seconds, cfg["iters_per_epoch"], cfg["val_iters"], cfg["time_budget_min"])
    cfg["plan_reasons"][-1] = (f"epochs {cfg['epochs']}: as many as fit {cfg['time_budget_min']:g} min at "
                               f"{seconds:.2f} s per measured training step ({TIMING_STEPS} steps after "
                               f"{TIMING_WARMUP} warm-up)")


def _clear_previous_run(out: str, folds: list, args, env: Dist, log: RunLog) -> None:
    """Folds that already hold checkpoints: kept with --resume, deleted with --overwrite or when the run
    folder is the default one, else an error (a user-chosen folder is never overwritten silently)."""
    existing = [f for f in folds if os.path.isfile(os.path.join(out, f"fold_{f}", ckpt.LATEST))]
    if not existing or args.resume:
        return
    if not (args.overwrite or args.output is None):
        raise SystemExit(f"{out} already holds checkpoints of fold(s) {existing}; pass --resume to continue "
                         "or --overwrite to start again")
    if env.main:
        for f in existing:
            shutil.rmtree(os.path.join(out, f"fold_{f}"))
        for stale in STALE_RUN_FILES:
            if os.path.isfile(os.path.join(out, stale)):
                os.remove(os.path.join(out, stale))
        log.history = {}
    env.barrier()


# ---------------------------------------------------------------------------------------------------
# One fold
# ---------------------------------------------------------------------------------------------------
def train_fold(cfg: dict, args, plans: dict, preprocessed: str, split: dict, fold_dir: str,
               device: torch.device, env: Dist, log: RunLog) -> dict:
    """Train one fold; returns the bare trained model and the autocast dtype it was trained with.

    From ``args``: backend, init_from (UpKern), amp, resume, compile, no_progress.
    """
    torch.manual_seed(cfg["seed"])  # same initial weights on every rank (DDP broadcasts rank 0's anyway)
    np.random.seed(cfg["seed"])
    model = build_model(cfg, args.backend)
    if args.init_from:
        try:
            mf.upkern(model, args.init_from)
        except (ValueError, FileNotFoundError) as err:  # e.g. a larger kernel than this run's: one line, no traceback
            raise SystemExit(f"--init-from {args.init_from}: {err}") from None
        log(f"initialised from {args.init_from} (UpKern)")
    model.to(device, memory_format=memory_format(device))
    amp, amp_name = amp_dtype(args.amp, device)
    optimizer, scaler, loss_fn = _recipe(model, cfg, device, amp)
    sampler = data.Batches(preprocessed, split["train"], plans, cfg["patch_size"], cfg["batch_size"],
                           augment=True, seed=cfg["seed"], rank=env.rank)
    # Validation patches: the same every epoch (fixed epoch index) so the curve shows the model, not the draw.
    val_sampler = data.Batches(preprocessed, split["val"], plans, cfg["patch_size"], cfg["batch_size"],
                               augment=False, seed=cfg["seed"] + 1, rank=env.rank)

    latest = os.path.join(fold_dir, ckpt.LATEST)
    start_epoch, best_ema, ema = 0, -math.inf, None
    if args.resume and os.path.isfile(latest):
        state = ckpt.load(latest)
        start_epoch = ckpt.restore(state, model, optimizer, scaler, sampler)
        best_ema, ema = state.get("best_ema", -math.inf), state.get("ema")
        log(f"resumed from {latest}: next epoch {start_epoch}, lr {state.get('lr')}")
    elif args.resume:
        log(f"--resume: no {latest} yet, starting at epoch 0")

    net = torch.compile(model) if args.compile else model
    net = env.wrap(net, device)
    epochs, iters = cfg["epochs"], cfg["iters_per_epoch"]
    hide = args.no_progress or not env.main
    for epoch in range(start_epoch, epochs):
        lr = poly_lr(epoch, epochs, cfg["lr"])
        set_lr(optimizer, lr)
        t0 = time.time()
        losses = _train_epoch(net, model, sampler, optimizer, scaler, loss_fn, epoch, iters, device, amp, hide)
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


def _train_epoch(net, model, sampler, optimizer, scaler, loss_fn, epoch: int, iters: int, device, amp,
                 hide: bool) -> list:
    """``iters`` optimiser steps on augmented patches; the per-step losses (device tensors)."""
    net.train()
    losses = []
    bar = progress_bar(total=iters, disable=hide, desc=f"epoch {epoch}")
    layout = memory_format(device)
    for x, y in sampler.epoch(epoch, iters, device):  # y: label pyramid, full resolution first
        x = x.contiguous(memory_format=layout)
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
    return losses


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
