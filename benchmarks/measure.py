"""Timing and peak-memory measurement: medians and spread, never single runs.

CPU: wall clock around each run; peak resident memory from the kernel's high-water mark (VmHWM), reset
before each measurement through /proc/self/clear_refs. CUDA: CUDA events around each run, L2 flushed
between runs, and the caching allocator's peak.
"""
from __future__ import annotations

import statistics
import time

import torch


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


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(fn, device: str, min_time_s: float = 0.5, max_runs: int = 50) -> dict:
    """Run ``fn`` repeatedly; return median/IQR seconds, run count and peak memory in bytes.

    The first call is a warm-up (and compile, for torch.compile); its time is reported separately.
    """
    start = time.perf_counter()
    fn()
    _sync(device)
    first_s = time.perf_counter() - start
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        times = _cuda_times(fn, min_time_s, max_runs)
        peak = torch.cuda.max_memory_allocated() - base
        peak_abs = torch.cuda.max_memory_allocated()
    else:
        has_peak = _reset_cpu_peak()
        base = _read_status_kib("VmRSS")
        times = _cpu_times(fn, min_time_s, max_runs)
        hwm = _read_status_kib("VmHWM") if has_peak else None
        peak = (hwm - base) * 1024 if hwm is not None and base is not None else None
        peak_abs = hwm * 1024 if hwm is not None else None
    times.sort()
    quartiles = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return dict(median_s=statistics.median(times), iqr_s=quartiles[2] - quartiles[0], runs=len(times),
                first_call_s=first_s, peak_extra_bytes=peak, peak_bytes=peak_abs)


def _cpu_times(fn, min_time_s: float, max_runs: int) -> list:
    times, spent = [], 0.0
    while (spent < min_time_s or len(times) < 3) and len(times) < max_runs:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        spent += elapsed
    return times


def _cuda_times(fn, min_time_s: float, max_runs: int) -> list:
    """CUDA events around each run (the first call already warmed up and compiled), L2 flushed between runs
    so small cases are not timed out of cache. Stops after min_time_s and at least 3 runs: a 1 s train step
    gets 3 samples, where do_bench's 5-run estimate would leave it one."""
    flush = torch.empty(256 * 2 ** 20, dtype=torch.int8, device="cuda")  # larger than an H100/H200 L2
    times, spent = [], 0.0
    while (spent < min_time_s or len(times) < 3) and len(times) < max_runs:
        flush.zero_()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end) / 1e3)
        spent += times[-1]
    return times
