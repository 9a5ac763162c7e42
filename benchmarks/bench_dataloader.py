"""Throughput of the training data path: patch loader (worker processes) + augmentation, in patches/s.

    python -m benchmarks.bench_dataloader                      # CPU, 2 workers, 128^3, batch 2, augment in workers
    python -m benchmarks.bench_dataloader --augment-in main    # CPU, augment in the main process
    python -m benchmarks.bench_dataloader --device cuda        # augmentation on the GPU

Data: Colin27 (mricron-data) when installed, else synthetic MR phantoms of 160^3; preprocessed once into
--cache (default /tmp/mednext_fast_bench_data) and reused. The loader cuts the enlarged initial patch
(205^3 for 128^3) in its workers; on CPU the workers also run ``augment`` (CPU-only training), on a GPU
the main process moves the batch to --device and runs ``augment`` there.
Prints one JSON line (patches/s, seconds per batch, loader wait share) and appends one row to the results
CSV (suite "dataloader", column "loader": median and IQR of the time per batch).
"""
import argparse
import json
import os
import statistics
import time

import torch

from benchmarks import device_info, store
from mednext_fast.train import augment, colin27, preprocess, sampling, synthetic


def data_dir(cache: str, patch) -> tuple:
    raw = os.path.join(cache, "raw")
    if colin27.available():
        name = "colin27"
        if not os.path.isfile(os.path.join(raw, "dataset.json")):
            colin27.write_dataset(raw)
    else:
        name = "synthetic-mr 160^3"
        if not os.path.isfile(os.path.join(raw, "dataset.json")):
            synthetic.write_synthetic_dataset(raw, "mr", n_cases=4, shape=(160, 160, 160))
    pre = os.path.join(cache, "preprocessed")
    preprocess.prepare_dataset(raw, pre, workers=2, patch_size=patch, progress=False)
    return name, pre


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="/tmp/mednext_fast_bench_data")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--batches", type=int, default=20, help="timed batches (after 2 warm-up batches)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--augment-in", choices=["auto", "workers", "main"], default="auto",
                    help="where augment() runs: 'workers' (the loader processes, for CPU-only training), 'main' (this "
                         "process, on --device); auto = workers on CPU, main on a GPU")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the main process (0: torch's default)")
    ap.add_argument("--csv", default=store.DEFAULT_CSV, help="results CSV to append to (default: %(default)s)")
    ap.add_argument("--note", default=None, help="free text for the row's note")
    args = ap.parse_args(argv)
    args.augment_in_workers = args.augment_in == "workers" or (args.augment_in == "auto" and args.device == "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    patch = [args.patch] * 3
    name, pre = data_dir(args.cache, patch)
    plans = preprocess.load_plans(pre)
    loader = sampling.make_loader(pre, num_workers=args.workers, batch_size=args.batch_size, patch_size=patch,
                                  pin_memory=args.device.startswith("cuda"), seed=0,
                                  augment_in_worker=True if args.augment_in_workers else None)
    dev = torch.device(args.device)
    gen = torch.Generator(device=dev).manual_seed(0)
    it = iter(loader)
    wait, marks = 0.0, []  # marks: the start of each timed batch, then the end of the last
    for i in range(args.batches + 2):
        if i >= 2:  # time after worker start-up and the first batches
            if dev.type == "cuda":
                torch.cuda.synchronize()
            marks.append(time.perf_counter())
        if i == 2:
            t0, wait = marks[0], 0.0
        tw = time.perf_counter()
        x, y = next(it)
        wait += time.perf_counter() - tw
        if args.augment_in_workers:
            img, pyr = x.to(dev), [t.to(dev) for t in y]
        else:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            img, pyr = augment.augment(x, y, gen, patch_size=patch, use_mask_for_norm=plans["use_mask_for_norm"])
        assert img.shape[2:] == tuple(patch) and len(pyr) == 5
    if dev.type == "cuda":
        torch.cuda.synchronize()
    marks.append(time.perf_counter())
    per_batch = [b - a for a, b in zip(marks, marks[1:])]
    dt = marks[-1] - t0
    n = args.batches * args.batch_size
    where = "workers" if args.augment_in_workers else str(dev)
    result = dict(dataset=name, device=str(dev), workers=args.workers, patch=args.patch,
                  batch_size=args.batch_size, batches=args.batches, patches_per_s=round(n / dt, 3),
                  augment_in=where, s_per_batch=round(dt / args.batches, 3), loader_wait_share=round(wait / dt, 3),
                  torch_threads=torch.get_num_threads())
    print(json.dumps(result))
    quartiles = statistics.quantiles(per_batch, n=4) if len(per_batch) >= 2 else [per_batch[0]] * 3
    env = device_info.row_environment(dev.type, device_info.command_line("benchmarks.bench_dataloader", argv),
                                      note=args.note)
    row = dict(env, suite="dataloader", size=args.patch, batch=args.batch_size, dtype="fp32",
               mode=f"{args.workers} workers, augment in {where}", column="loader",
               median_ms=statistics.median(per_batch) * 1e3, iqr_ms=(quartiles[2] - quartiles[0]) * 1e3,
               runs=len(per_batch), extra=dict(dataset=name, patches_per_s=result["patches_per_s"],
                                               loader_wait_share=result["loader_wait_share"]))
    store.append([row], args.csv)


if __name__ == "__main__":
    main()
