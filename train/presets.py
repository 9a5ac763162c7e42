"""Run presets as data, the run configuration they resolve to, and the model a configuration describes.

A preset sets the model, the run length and the planning budget (``planning.py`` turns the dataset's
fingerprint into spacing, patch and batch size); explicit options win. The resolved configuration is saved in
the run's ``plans.json`` and in every checkpoint, so prediction rebuilds the same model from it.
"""
from __future__ import annotations

import mednext_fast as mf
from mednext_fast.train import planning

# A preset is the model, the run length and the planning rules; the spacing, patch and batch size come from the
# dataset's fingerprint (planning.py) unless the preset or an option fixes them.
PRESETS = {
    "paper": dict(spacing_rule="1mm", budget=planning.PAPER_BUDGET, epochs=1000, iters_per_epoch=250, val_iters=50,
                  mirror=True, model={}),
    # CPU demo: an 8-channel one-block model on the CPU budget (coarser spacing, 64^3-voxel patches), as many
    # epochs as fit the budget's minutes, no mirroring in the final validation.
    "demo": dict(spacing_rule="median", budget=planning.CPU_BUDGET, iters_per_epoch=25, val_iters=6, mirror=False,
                 model=dict(n_channels=8, block_counts=[1] * 9, exp_r=2, checkpoint_style=None)),
    # Tests: fixed and small.
    "tiny": dict(spacing_rule="1mm", budget=planning.CPU_BUDGET, patch_size=[32, 32, 32], batch_size=2, epochs=2,
                 iters_per_epoch=3, val_iters=2, mirror=True,
                 model=dict(n_channels=4, block_counts=[1] * 9, exp_r=2, checkpoint_style=None)),
}


def preset_name(args, on_gpu: bool) -> str:
    """--preset, else the paper recipe for a dataset on a GPU, else the CPU demo."""
    return args.preset or ("paper" if args.dataset and on_gpu else "demo")


def resolve_config(args, ds, on_gpu: bool, fingerprint: dict) -> dict:
    """The run configuration from the training options ``args`` (run.py's parser), the dataset ``ds`` and its
    ``fingerprint``. ``epochs`` is None when the budget's minutes decide it (``planning.fit_epochs``, once a
    training step has been timed); ``plan_reasons`` says why each planned value was chosen."""
    name = preset_name(args, on_gpu)
    preset = PRESETS[name]
    patch = args.patch_size or preset.get("patch_size")
    if patch is not None:
        if len(patch) == 1:
            patch = patch * 3
        if len(patch) != 3 or any(p % 16 or p <= 0 for p in patch):
            raise SystemExit(f"--patch-size {patch}: need 1 or 3 positive sizes divisible by 16 "
                             "(MedNeXt down-samples 4x)")
    rule, spacing = preset["spacing_rule"], None
    if args.target_spacing:
        given = args.target_spacing
        if len(given) == 1 and given[0] in ("1mm", "median"):
            rule = given[0]
        else:
            try:
                spacing = [float(t) for t in given] * (3 if len(given) == 1 else 1)
            except ValueError:
                spacing = []
            if len(spacing) != 3 or min(spacing) <= 0:
                raise SystemExit(f"--target-spacing {' '.join(given)}: need '1mm', 'median', or 1 or 3 positive "
                                 "numbers in mm")
    budget = preset["budget"]
    planned, reasons = planning.plan(fingerprint, budget, rule, spacing, patch,
                                     args.batch_size or preset.get("batch_size"))
    if args.time_budget is not None and args.time_budget <= 0:
        raise SystemExit(f"--time-budget {args.time_budget:g}: need a positive number of minutes")
    epochs = args.epochs or preset.get("epochs")
    minutes = args.time_budget or budget.minutes
    if epochs is None:
        reasons.append(f"epochs: as many as fit {minutes:g} min at the measured step time ({budget.name} budget)")
    model_cfg = dict(preset["model"])
    if args.checkpointing:
        model_cfg["checkpoint_style"] = "outside_block"
    mirror = preset["mirror"] if args.mirror is None else args.mirror == "on"
    return dict(preset=name, variant=args.variant, mirror=mirror, kernel=args.kernel,
                target_spacing=planned["target_spacing"], patch_size=planned["patch_size"],
                batch_size=planned["batch_size"], epochs=epochs, time_budget_min=None if epochs else minutes,
                iters_per_epoch=args.iters_per_epoch or preset["iters_per_epoch"],
                val_iters=args.val_iters or preset["val_iters"], lr=args.lr, model=model_cfg,
                deep_supervision=not args.no_deep_supervision, batch_dice=args.batch_dice,
                in_channels=ds.in_channels, n_classes=ds.n_classes, seed=args.seed, split_seed=args.split_seed,
                plan_reasons=reasons)


def build_model(cfg: dict, backend: str = "auto") -> mf.MedNeXt:
    """The MedNeXt of a run configuration (training and prediction build it the same way)."""
    model = mf.create_mednext(cfg["variant"], cfg["in_channels"], cfg["n_classes"], kernel_size=cfg["kernel"],
                              deep_supervision=cfg["deep_supervision"], backend=backend, **cfg["model"])
    # The official state_dict's dummy_tensor never takes part in the forward; as a trainable parameter
    # it would break DDP's gradient reduction. It gets no gradient either way.
    model.dummy_tensor.requires_grad_(False)
    return model
