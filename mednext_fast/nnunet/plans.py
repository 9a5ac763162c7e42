"""``python -m mednext_fast.nnunet plans``: add a MedNeXt configuration to an nnU-Net v2 plans file.

MedNeXt needs patch sizes divisible by 16; the paper trained at 1 mm isotropic spacing with 128^3 patches and
batch 2. The command reads the plans (``nnUNetv2_plan_and_preprocess`` writes them) and the dataset fingerprint
from ``$nnUNet_preprocessed/DatasetXXX_Name`` and adds a configuration (default ``3d_fullres_mednext``) that
inherits everything else (normalisation, resampling, batch Dice) from ``3d_fullres``:

    python -m mednext_fast.nnunet plans -d 1                           # paper: 1 mm, 128^3, batch 2
    python -m mednext_fast.nnunet plans -d 1 --spacing median --patch 128 160 112 --batch-size 2
    nnUNetv2_preprocess -d 1 -c 3d_fullres_mednext                      # then train that configuration

Spacing and patch are in the plans' axis order (after nnU-Net's transpose_forward, as in 3d_fullres). When
the spacing equals the source configuration's, its preprocessed data are reused (no second preprocessing).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics

from mednext_fast.atomic import write_json
from mednext_fast.configs import KERNEL_SIZES, VARIANTS
from mednext_fast.nnunet import network

PAPER = dict(spacing=[1.0, 1.0, 1.0], patch=[128, 128, 128], batch_size=2)
DEFAULT_NAME = "3d_fullres_mednext"


def preprocessed_dataset_dir(dataset: str, root: str | None = None) -> str:
    """$nnUNet_preprocessed/DatasetXXX_Name for a dataset id (``1``, ``001``) or full name."""
    root = root or os.environ.get("nnUNet_preprocessed")
    if not root:
        raise SystemExit("nnUNet_preprocessed is not set; export it as for nnU-Net (see docs/nnunet.md)")
    if os.path.isdir(os.path.join(root, dataset)):
        return os.path.join(root, dataset)
    if dataset.isdigit():
        prefix = f"Dataset{int(dataset):03d}_"
        found = sorted(d for d in os.listdir(root) if d.startswith(prefix)) if os.path.isdir(root) else []
        if len(found) == 1:
            return os.path.join(root, found[0])
        if len(found) > 1:
            raise SystemExit(f"several datasets with id {dataset} in {root}: {found}; pass the full name")
    raise SystemExit(f"dataset {dataset!r} not found in nnUNet_preprocessed={root}; run "
                     f"`nnUNetv2_plan_and_preprocess -d {dataset}` (or nnUNetv2_extract_fingerprint and "
                     "nnUNetv2_plan_experiment) first")


def _load(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise SystemExit(f"{path} not found: {what}")
    with open(path) as handle:
        return json.load(handle)


def median_shape(fingerprint: dict, transpose: list, spacing: list) -> list:
    """Median image size in voxels at ``spacing`` of the cropped training images (axis order after transpose),
    as nnU-Net's planner computes it."""
    shapes = []
    for shape, case_spacing in zip(fingerprint["shapes_after_crop"], fingerprint["spacings"]):
        shape = [shape[t] for t in transpose]
        case_spacing = [case_spacing[t] for t in transpose]
        shapes.append([round(n * s / t) for n, s, t in zip(shape, case_spacing, spacing)])
    return [float(statistics.median(axis)) for axis in zip(*shapes)]


def mednext_configuration(plans: dict, fingerprint: dict, source: str = "3d_fullres", name: str = DEFAULT_NAME,
                          spacing="1mm", patch=None, batch_size: int = 2, variant: str = "B",
                          kernel_size: int = 3) -> tuple[dict, list]:
    """(configuration dict, notes) for a MedNeXt configuration inheriting from ``source``.

    ``spacing``: '1mm' (the paper), 'median' (the source configuration's), or 3 numbers in mm. ``patch``: 1 or
    3 sizes, each divisible by 16 (default 128^3, the paper's). ``variant``/``kernel_size`` fill the
    configuration's architecture entry, which only the generic nnUNetTrainerMedNeXt reads (the named
    trainers take theirs from their names). Raises ValueError naming the fix for an unusable patch.
    """
    configs = plans.get("configurations", {})
    if source not in configs:
        raise ValueError(f"the plans have no configuration {source!r} to start from (they have "
                         f"{sorted(configs)}); run nnUNetv2_plan_experiment, or pass --source")
    parent = dict(configs[source])
    while "inherits_from" in parent:  # resolve as nnU-Net does: child keys over the parent's
        child = dict(parent)
        parent = dict(configs[child.pop("inherits_from")])
        parent.update(child)
    if len(parent["spacing"]) != 3:
        raise ValueError(f"configuration {source!r} is {len(parent['spacing'])}-D; MedNeXt here is 3-D: "
                         "pass --source 3d_fullres")
    if spacing == "1mm":
        target = list(PAPER["spacing"])
    elif spacing == "median":
        target = [float(s) for s in parent["spacing"]]
    else:
        target = [float(s) for s in spacing]
        if len(target) == 1:
            target *= 3
        if len(target) != 3 or any(s <= 0 for s in target):
            raise ValueError(f"--spacing needs '1mm', 'median' or 1 or 3 positive numbers in mm, got {spacing}")
    patch = [int(p) for p in (patch or PAPER["patch"])]
    if len(patch) == 1:
        patch *= 3
    network.check_patch(patch, f"--patch {' '.join(map(str, patch))}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    median = median_shape(fingerprint, plans["transpose_forward"], target)
    notes = []
    small = [f"axis {i}: {p} > {m:g}" for i, (p, m) in enumerate(zip(patch, median)) if p > m]
    if small:
        notes.append(f"the patch exceeds the median image size ({', '.join(small)} voxels at this spacing); "
                     "nnU-Net pads such images, which costs time without adding context")
    same_spacing = all(abs(a - b) < 1e-6 for a, b in zip(target, parent["spacing"]))
    data_identifier = parent["data_identifier"] if same_spacing else f"{plans['plans_name']}_{name}"
    config = {"inherits_from": source, "data_identifier": data_identifier, "spacing": target, "patch_size": patch,
              "batch_size": int(batch_size), "median_image_size_in_voxels": median,
              "architecture": network.arch_entry(variant, kernel_size)}
    return config, notes


def add_configuration(dataset_dir: str, plans_name: str = "nnUNetPlans", overwrite: bool = False, **options) -> dict:
    """Add the MedNeXt configuration to ``dataset_dir``/<plans_name>.json (atomically); returns it."""
    plans_path = os.path.join(dataset_dir, f"{plans_name}.json")
    plans = _load(plans_path, "run `nnUNetv2_plan_and_preprocess -d ID` (or nnUNetv2_plan_experiment) first")
    fingerprint = _load(os.path.join(dataset_dir, "dataset_fingerprint.json"),
                        "run `nnUNetv2_extract_fingerprint -d ID` first")
    name = options.get("name", DEFAULT_NAME)
    if name in plans["configurations"] and not overwrite:
        raise SystemExit(f"{plans_path} already has a configuration {name!r}; pass --overwrite to replace it "
                         "(then preprocess again if its spacing changed)")
    config, notes = mednext_configuration(plans, dict(fingerprint), **options)
    plans["configurations"][name] = config
    write_json(plans_path, plans)
    return dict(config=config, notes=notes, path=plans_path, name=name, plans_name=plans_name)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m mednext_fast.nnunet plans")
    p.description = "Add a MedNeXt configuration (patch divisible by 16; paper: 1 mm, 128^3, batch 2) to nnU-Net plans."
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name (as for nnUNetv2_train)")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("--name", default=DEFAULT_NAME, help=f"configuration name (default: {DEFAULT_NAME})")
    p.add_argument("--source", default="3d_fullres", help="configuration to inherit from (default: 3d_fullres)")
    p.add_argument("--spacing", nargs="+", default=["1mm"],
                   help="'1mm' (paper, default), 'median' (the source configuration's spacing), or 1 or 3 numbers "
                        "in mm in the plans' axis order")
    p.add_argument("--patch", nargs="+", type=int, default=PAPER["patch"],
                   help="patch size, 1 or 3 ints divisible by 16 (default: 128 128 128)")
    p.add_argument("--batch-size", type=int, default=PAPER["batch_size"], help="batch size (default: 2)")
    p.add_argument("--variant", default="B", type=str.upper, choices=sorted(VARIANTS),
                   help="architecture entry for the generic nnUNetTrainerMedNeXt (default: B)")
    p.add_argument("--kernel", default=3, type=int, choices=KERNEL_SIZES, help="its kernel size (default: 3)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing configuration of that name")
    return p


def main(args: argparse.Namespace) -> int:
    spacing = args.spacing[0] if len(args.spacing) == 1 and args.spacing[0] in ("1mm", "median") else args.spacing
    dataset_dir = preprocessed_dataset_dir(args.dataset)
    try:
        result = add_configuration(dataset_dir, args.plans, args.overwrite, name=args.name, source=args.source,
                                   spacing=spacing, patch=args.patch, batch_size=args.batch_size,
                                   variant=args.variant, kernel_size=args.kernel)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    config, dataset = result["config"], os.path.basename(dataset_dir)
    print(f"added configuration {result['name']!r} to {result['path']}: spacing {config['spacing']} mm, patch "
          f"{'x'.join(map(str, config['patch_size']))}, batch {config['batch_size']}, median image "
          f"{'x'.join(f'{m:g}' for m in config['median_image_size_in_voxels'])} voxels")
    for note in result["notes"]:
        print(f"note: {note}")
    plans_flag = "" if args.plans == "nnUNetPlans" else f" -p {args.plans}"
    plans_flag_pre = "" if args.plans == "nnUNetPlans" else f" -plans_name {args.plans}"
    print("next:")
    if os.path.isdir(os.path.join(dataset_dir, config["data_identifier"])) and config["data_identifier"] != \
            f"{args.plans}_{args.name}":
        print(f"  (the data preprocessed for {args.source!r} are reused: same spacing)")
    else:
        print(f"  nnUNetv2_preprocess -d {dataset} -c {result['name']}{plans_flag_pre}")
    print(f"  nnUNetv2_train {dataset} {result['name']} 0{plans_flag} -tr nnUNetTrainerMedNeXt_B_k3")
    return 0
