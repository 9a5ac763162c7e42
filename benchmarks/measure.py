"""Timing and peak-memory measurement: medians and spread, never single runs.

The implementations ("columns") of one case are timed in alternation, one run of each per round
(A B C A B C ...), so a change in machine load during the case hits every column alike and the ratios
between them stay put; timing the columns one after another let a busy spell land on one column only.
On CPU a short column (< SETTLE_BELOW_S a run) first does one untimed run per round: the run after
another column's is slower (the C++ backend after eager, whose allocations leave fresh memory to fault
in; docs/performance.md), and users run one model, not two in turn.

CPU: wall clock around each run; peak resident memory from the kernel's high-water mark (VmHWM), reset
before each run through /proc/self/clear_refs. CUDA: CUDA events around each run, L2 flushed between
runs, and the caching allocator's peak.
"""
from __future__ import annotations

import statistics
import time

import torch

SETTLE_BELOW_S = 1.0


def _read_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_cpu_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


class _Timer:
    """One timed run of fn on a device: (seconds, peak bytes above the start, absolute peak bytes)."""

    def __init__(self, device: str):
        self.device = device
        if device == "cuda":
            self.flush = torch.empty(256 * 2 ** 20, dtype=torch.int8, device="cuda")  # > H100/H200 L2

    def run(self, fn):
        if self.device == "cuda":
            self.flush.zero_()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            peak = torch.cuda.max_memory_allocated()
            return begin.elapsed_time(end) / 1e3, peak - base, peak
        has_peak = _reset_cpu_peak()
        base = _read_status_kib("VmRSS")
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        hwm = _read_status_kib("VmHWM") if has_peak else None
        if hwm is None or base is None:
            return elapsed, None, None
        return elapsed, (hwm - base) * 1024, hwm * 1024


def _first_call(fn, device: str) -> float:
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure_interleaved(fns: dict, device: str, min_time_s: float = 0.5, max_runs: int = 50,
                        min_runs: int = 5) -> dict:
    """Time every fn in ``fns`` (name -> callable) in rounds of one run each, after one warm-up call each
    (which also compiles; reported as first_call_s). A column stops after min_time_s of runs and at least
    min_runs runs (max_runs at most; a median of few runs moved ratios between repeated CPU runs).
    Returns name -> stats (median_s, iqr_s, runs, first_call_s, peak_extra_bytes, peak_bytes), or
    name -> Exception for a column that raised; the others go on.
    """
    timer = _Timer(device)
    results, samples = {}, {}
    for name, fn in fns.items():
        try:
            results[name] = dict(first_call_s=_first_call(fn, device))
            samples[name] = []
        except Exception as err:  # e.g. out of memory: report it, measure the rest
            results[name] = err

    def wanted(name):
        runs = samples[name]
        return (sum(t for t, _, _ in runs) < min_time_s or len(runs) < min_runs) and len(runs) < max_runs

    settle = {name: device == "cpu" and results[name]["first_call_s"] < SETTLE_BELOW_S for name in samples}
    while any(wanted(name) for name in samples):
        for name in [n for n in samples if wanted(n)]:
            try:
                if settle[name] and len(fns) > 1:
                    fns[name]()
                samples[name].append(timer.run(fns[name]))
            except Exception as err:
                results[name] = err
                del samples[name]
    for name, runs in samples.items():
        times = sorted(t for t, _, _ in runs)
        quartiles = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
        extra = [p for _, p, _ in runs if p is not None]
        absolute = [p for _, _, p in runs if p is not None]
        results[name].update(median_s=statistics.median(times), iqr_s=quartiles[2] - quartiles[0],
                             runs=len(times), peak_extra_bytes=max(extra) if extra else None,
                             peak_bytes=max(absolute) if absolute else None)
    return results
