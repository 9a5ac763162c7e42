"""Run presets as data, the run configuration they resolve to, and the model a configuration describes.

A preset sets the run length, the patch and (for the CPU-sized ones) a shrunken model; explicit options
win. The resolved configuration is saved in the run's ``plans.json`` and in every checkpoint, so
prediction rebuilds the same model from it.
"""
from __future__ import annotations

import mednext_fast as mf

PRESETS = {
    "paper": dict(patch_size=[128, 128, 128], batch_size=2, epochs=1000, iters_per_epoch=250, val_iters=50,
                  target_spacing="1mm", mirror=True, model={}),
    # CPU demo: an 8-channel one-block model, no mirroring in the final validation, and for Colin27 3 mm
    # voxels (a hemisphere becomes ~30x72x60, so a 32^3 patch sees most of it). The synthetic phantoms
    # (64 mm) stay at 1 mm, where their thin vessel survives.
    "demo": dict(patch_size=[32, 32, 32], batch_size=2, epochs=20, iters_per_epoch=25, val_iters=6,
                 target_spacing={"colin27": [3.0, 3.0, 3.0], "*": "1mm"}, mirror=False,
                 model=dict(n_channels=8, block_counts=[1] * 9, exp_r=2, checkpoint_style=None)),
    "tiny": dict(patch_size=[32, 32, 32], batch_size=2, epochs=2, iters_per_epoch=3, val_iters=2,
                 target_spacing="1mm", mirror=True,
                 model=dict(n_channels=4, block_counts=[1] * 9, exp_r=2, checkpoint_style=None)),
}
CPU_SIZED = ("demo", "tiny")  # presets whose small convs run on one CPU thread by default (see --threads)


def resolve_config(args, ds, on_gpu: bool) -> dict:
    """The run configuration from the training options ``args`` (run.py's parser) and the dataset ``ds``."""
    preset_name = args.preset or ("paper" if args.dataset and on_gpu else "demo")
    preset = PRESETS[preset_name]
    patch = args.patch_size or preset["patch_size"]
    if len(patch) == 1:
        patch = patch * 3
    if len(patch) != 3 or any(p % 16 or p <= 0 for p in patch):
        raise SystemExit(f"--patch-size {patch}: need 1 or 3 positive sizes divisible by 16 "
                         "(MedNeXt down-samples 4x)")
    model_cfg = dict(preset["model"])
    if args.checkpointing:
        model_cfg["checkpoint_style"] = "outside_block"
    if args.target_spacing:
        spacing = args.target_spacing
        target = spacing[0] if len(spacing) == 1 else [float(t) for t in spacing]
    else:
        target = preset["target_spacing"]
        if isinstance(target, dict):  # keyed by the dataset actually used (colin27 falls back to synthetic)
            is_colin = str(ds.meta.get("name", "")).lower().startswith("colin27")
            target = target["colin27"] if is_colin else target["*"]
    mirror = preset["mirror"] if args.mirror is None else args.mirror == "on"
    return dict(preset=preset_name, variant=args.variant, target_spacing=target, mirror=mirror, kernel=args.kernel,
                patch_size=list(patch), batch_size=args.batch_size or preset["batch_size"],
                epochs=args.epochs or preset["epochs"],
                iters_per_epoch=args.iters_per_epoch or preset["iters_per_epoch"],
                val_iters=args.val_iters or preset["val_iters"], lr=args.lr, model=model_cfg,
                deep_supervision=not args.no_deep_supervision, batch_dice=args.batch_dice,
                in_channels=ds.in_channels, n_classes=ds.n_classes, seed=args.seed, split_seed=args.split_seed)


def build_model(cfg: dict, backend: str = "auto") -> mf.MedNeXt:
    """The MedNeXt of a run configuration (training and prediction build it the same way)."""
    model = mf.create_mednext(cfg["variant"], cfg["in_channels"], cfg["n_classes"], kernel_size=cfg["kernel"],
                              deep_supervision=cfg["deep_supervision"], backend=backend, **cfg["model"])
    # The official state_dict's dummy_tensor never takes part in the forward; as a trainable parameter
    # it would break DDP's gradient reduction. It gets no gradient either way.
    model.dummy_tensor.requires_grad_(False)
    return model
