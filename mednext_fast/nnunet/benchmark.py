"""nnU-Net's own epoch time with our trainer: fused MedNeXt ('auto') vs the PyTorch reference path ('torch').

    python -m mednext_fast.nnunet.benchmark                         # GPU: synthetic 128^3 cases, B k3, batch 2
    python -m mednext_fast.nnunet.benchmark --dataset 1 --configuration 3d_fullres_mednext --variant L --kernel 5
    python -m mednext_fast.nnunet.benchmark --device cpu --cases 5 --shape 32 --patch 32 --variant S \\
        --epochs 1 --iterations 1 --val-iterations 1                  # the CPU smoke run of the test suite

Each backend trains in its own process (same plans, same trainer, ``MEDNEXT_FAST_BACKEND`` the only
difference) through nnU-Net's ``run_training`` loop (data loading, augmentation, loss, validation batches,
nnUNet_compile as nnU-Net sets it: on by default on CUDA), for ``--epochs`` epochs of ``--iterations``
iterations; no checkpoints, no final validation. Reported per backend: the median epoch time of the
epochs after the first (the first pays compilation and warm-up; with one epoch, that one), the first epoch's
time, and peak memory: CUDA's max allocated on a GPU, the process's peak RSS on CPU. On CPU both columns
train on the PyTorch path (the C++ kernels are inference-only): the CPU run checks the machinery.

Without ``--dataset`` it writes a synthetic dataset (train/synthetic.py phantoms), runs
nnUNetv2_plan_and_preprocess and the plans command in ``--workdir`` (a temporary folder by default).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from mednext_fast.configs import KERNEL_SIZES, VARIANTS

SYNTHETIC_ID = 977
RESULT = "MEDNEXT_NNUNET_BENCHMARK "  # prefix of the worker's result line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mednext_fast.nnunet.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", help="an nnU-Net dataset id/name already planned (nnUNet_* variables set); "
                                     "default: a synthetic one in --workdir")
    p.add_argument("--configuration", default="3d_fullres_mednext", help="configuration to train")
    p.add_argument("--plans", default="nnUNetPlans", help="plans identifier")
    p.add_argument("--variant", default="B", type=str.upper, choices=sorted(VARIANTS))
    p.add_argument("--kernel", default=3, type=int, choices=KERNEL_SIZES)
    p.add_argument("--backends", default="auto,torch", help="comma-separated MedNeXt backends (default: auto,torch)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--epochs", type=int, default=3, help="epochs per backend (default: 3)")
    p.add_argument("--iterations", type=int, default=50, help="training iterations per epoch (default: 50)")
    p.add_argument("--val-iterations", type=int, default=10, help="validation batches per epoch (default: 10)")
    p.add_argument("--compile", choices=("default", "on", "off"), default="default",
                   help="nnUNet_compile: nnU-Net's default (on for CUDA), or forced")
    p.add_argument("--cases", type=int, default=8, help="synthetic: number of cases (default: 8)")
    p.add_argument("--shape", type=int, default=160, help="synthetic: image edge in voxels at 1 mm (default: 160)")
    p.add_argument("--patch", type=int, default=128, help="synthetic: patch edge (default: 128, the paper's)")
    p.add_argument("--batch-size", type=int, default=2, help="synthetic: batch size (default: 2, the paper's)")
    p.add_argument("--workdir", help="folder for the synthetic dataset and results (default: a temporary one)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one backend, print its result line
    args = p.parse_args(argv)
    if args.dataset is None and args.cases < 5:
        p.error(f"--cases {args.cases}: nnU-Net's 5-fold split needs at least 5 cases")
    return args


# -- one backend, in its own process -------------------------------------------------------------------
def worker(args) -> dict:
    import resource

    import torch

    from nnunetv2.run.run_training import get_trainer_from_args  # noqa: F401  (nnU-Net's set-up, imported first)
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.paths import nnUNet_preprocessed

    from mednext_fast.nnunet import trainer as ours

    base = getattr(ours, f"nnUNetTrainerMedNeXt_{args.variant}_k{args.kernel}")

    class Timed(base):
        # nnU-Net records its trainers' __init__ arguments by name: keep its signature.
        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = args.epochs
            self.num_iterations_per_epoch = args.iterations
            self.num_val_iterations_per_epoch = args.val_iterations
            self.disable_checkpointing = True

    Timed.__name__ = Timed.__qualname__ = f"{base.__name__}_benchmark_{args.worker}"
    device = torch.device(args.device)
    folder = os.path.join(str(nnUNet_preprocessed), maybe_convert_to_dataset_name(args.dataset))
    with open(os.path.join(folder, f"{args.plans}.json")) as handle:
        plans = json.load(handle)
    with open(os.path.join(folder, "dataset.json")) as handle:
        dataset_json = json.load(handle)
    plans["continue_training"] = False
    trainer = Timed(plans=plans, configuration=args.configuration, fold=0, dataset_json=dataset_json, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.run_training()
    # nnU-Net's own per-epoch timestamps (what its log prints as "Epoch time").
    starts, ends = (trainer.logger.get_value(k, None) for k in ("epoch_start_timestamps", "epoch_end_timestamps"))
    epochs = [end - start for start, end in zip(starts, ends)]
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    from mednext_fast.nnunet.network import unwrap
    from mednext_fast.nnunet.trainer import backend_summary

    return dict(backend=args.worker, epoch_s=epochs, peak_bytes=int(peak), device=str(device),
                device_name=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                runs=backend_summary(unwrap(trainer.network), device), batch_size=trainer.batch_size,
                patch_size=list(trainer.configuration_manager.patch_size), iterations=args.iterations,
                torch=torch.__version__)


# -- the driver -------------------------------------------------------------------------------------------
def prepare_synthetic(args, env: dict) -> str:
    from mednext_fast.train.synthetic import write_synthetic_dataset

    name = f"Dataset{SYNTHETIC_ID}_MedNeXtBenchmark"
    raw = os.path.join(env["nnUNet_raw"], name)
    if not os.path.isfile(os.path.join(env["nnUNet_preprocessed"], name, "nnUNetPlans.json")):
        write_synthetic_dataset(raw, "mr", n_cases=args.cases, shape=(args.shape,) * 3)
        _check([os.path.join(os.path.dirname(sys.executable), "nnUNetv2_plan_and_preprocess"), "-d",
                str(SYNTHETIC_ID), "-c", "3d_fullres", "-np", "2"], env)
    _check([sys.executable, "-m", "mednext_fast.nnunet", "plans", "-d", str(SYNTHETIC_ID), "--overwrite",
            "--name", args.configuration, "--patch", str(args.patch), "--batch-size", str(args.batch_size)], env)
    return name


def _check(cmd, env):
    result = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}")


def run_backend(args, backend: str, env: dict) -> dict:
    cmd = [sys.executable, "-m", "mednext_fast.nnunet.benchmark", "--worker", backend, "--dataset", args.dataset,
           "--configuration", args.configuration, "--plans", args.plans, "--variant", args.variant,
           "--kernel", str(args.kernel), "--device", args.device, "--epochs", str(args.epochs),
           "--iterations", str(args.iterations), "--val-iterations", str(args.val_iterations)]
    started = time.perf_counter()
    result = subprocess.run(cmd, env=dict(env, MEDNEXT_FAST_BACKEND=backend), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT)]
    if result.returncode or not lines:
        raise SystemExit(f"backend {backend!r} failed ({result.returncode}):\n{result.stdout[-3000:]}")
    out = json.loads(lines[-1][len(RESULT):])
    out["wall_s"] = time.perf_counter() - started
    return out


def summarise(results: list) -> list:
    """Rows with the warm epoch time (median after the first epoch) and the speed-up vs the 'torch' row."""
    rows = []
    for r in results:
        warm = r["epoch_s"][1:] or r["epoch_s"]
        rows.append(dict(r, warm_epoch_s=statistics.median(warm), first_epoch_s=r["epoch_s"][0]))
    ref = next((row for row in rows if row["backend"] == "torch"), None)
    for row in rows:
        row["speedup_vs_torch"] = ref["warm_epoch_s"] / row["warm_epoch_s"] if ref else None
        row["memory_vs_torch"] = row["peak_bytes"] / ref["peak_bytes"] if ref else None
    return rows


def format_table(rows: list) -> str:
    head = ("| backend | runs | epoch (warm) | epoch / iterations | first epoch | peak memory | speed-up vs torch "
            "| memory vs torch |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        ratio = "" if r["speedup_vs_torch"] is None else f"{r['speedup_vs_torch']:.2f}x"
        mem = "" if r["memory_vs_torch"] is None else f"{r['memory_vs_torch']:.2f}"
        lines.append(f"| {r['backend']} | {r['runs']} | {r['warm_epoch_s']:.2f} s | "
                     f"{r['warm_epoch_s'] / r['iterations']:.3f} s | {r['first_epoch_s']:.2f} s | "
                     f"{r['peak_bytes'] / 2 ** 20:.0f} MiB | {ratio} | {mem} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(RESULT + json.dumps(worker(args)), flush=True)
        return 0
    env = dict(os.environ)
    if args.compile != "default":
        env["nnUNet_compile"] = "1" if args.compile == "on" else "0"
    workdir = None
    if args.dataset is None:
        workdir = args.workdir or tempfile.mkdtemp(prefix="mednext_nnunet_bench_")
        for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            env[name] = os.path.join(workdir, name)
        args.dataset = prepare_synthetic(args, env)
    elif "nnUNet_results" not in env:
        raise SystemExit("set nnUNet_raw / nnUNet_preprocessed / nnUNet_results as for nnUNetv2_train")
    results = [run_backend(args, b.strip(), env) for b in args.backends.split(",") if b.strip()]
    rows = summarise(results)
    first = rows[0]
    print(f"nnU-Net epoch time, MedNeXt-{args.variant} k{args.kernel}, {args.configuration} of {args.dataset}: "
          f"patch {'x'.join(map(str, first['patch_size']))}, batch {first['batch_size']}, {args.iterations} "
          f"iterations + {args.val_iterations} validation batches per epoch, {args.epochs} epoch(s), "
          f"{first['device_name']}, torch {first['torch']}")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(args=vars(args), rows=rows, workdir=workdir), handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
