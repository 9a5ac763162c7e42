"""Launch configurations of the Triton kernels: the search space, committed per-GPU tables, tuning on demand.

A kernel asks ``choose(kernel, key, default, space, bench, device)`` for its configuration. In order:

1. ``FORCED[kernel]`` (tests pin one configuration of the space with it);
2. the table for this GPU: ``kernels/tuned/<gpu>.json`` (committed, written by ``python -m
   mednext_fast.kernels.tune``) merged with the user's cache (``$MEDNEXT_FAST_CACHE_DIR``, default
   ``~/.cache/mednext_fast``), keyed by the launch (kernel, channels, sizes, kernel size, mode, dtype);
3. with ``MEDNEXT_FAST_AUTOTUNE=1`` and a miss: every configuration of the space is timed on the call's own
   tensors (``bench(config) -> ms``), the fastest is used and saved in the user's cache;
4. otherwise the kernel's default (a heuristic that fits the registers; see kernels/README.md).

Each configuration is deterministic on its own, so a tuned run repeats bitwise; two GPUs with different
tables may round differently. Nothing is tuned during CUDA-graph capture or under the interpreter.
"""
from __future__ import annotations

import functools
import json
import os
import re
import tempfile
import warnings
from typing import Callable, NamedTuple, Optional

TUNED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tuned")


class ConvConfig(NamedTuple):
    """Depthwise conv forward / dgrad: an output tile of ``bs`` voxels, at most ``tw`` of them along W (the
    rest along H, then D), ``bc`` channels, ``warps`` warps."""
    bs: int
    tw: int
    bc: int
    warps: int


class WgradConfig(NamedTuple):
    """Depthwise weight gradient: sub-blocks of ``bs`` positions x ``bc`` channels; the positions are split
    so that about ``programs`` programs run (each sums several sub-blocks into one partial)."""
    bs: int
    bc: int
    warps: int
    programs: int


KINDS = {"conv": ConvConfig, "wgrad": WgradConfig}

# Tests pin a configuration here: {"conv": ConvConfig(...), "wgrad": WgradConfig(...)}.
FORCED: dict = {}
# What tuning measured in this process, per launch key: {"default": ms, "candidates": [(config, ms), ...]}.
TIMINGS: dict = {}


def key(kernel: str, c: int, dims, k: int, mode: str, dtype) -> str:
    """The table key of one launch, e.g. ``conv|C32|128x128x128|k5|stride1-fwd|bfloat16``."""
    return f"{kernel}|C{c}|{'x'.join(str(int(v)) for v in dims)}|k{k}|{mode}|{str(dtype).replace('torch.', '')}"


def gpu_slug(name: str) -> str:
    """``NVIDIA H200`` -> ``nvidia-h200``: the table's file name for a GPU."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _cache_path(slug: str) -> str:
    root = os.environ.get("MEDNEXT_FAST_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                      "mednext_fast")
    return os.path.join(root, f"tuned-{slug}.json")


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise RuntimeError(f"tuning table {path} cannot be read ({err}); delete or fix it") from err
    return data.get("configs", {})


def write_table(path: str, configs: dict, meta: Optional[dict] = None) -> None:
    """Write ``{key: config}`` atomically (a killed writer leaves the old file whole)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    body = {"meta": meta or {}, "configs": {k: list(v) for k, v in sorted(configs.items())}}
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(body, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


_TABLES: dict = {}


def table(slug: str) -> dict:
    """The committed table for this GPU merged with the user's cache (the cache wins)."""
    if slug not in _TABLES:
        merged = _read(os.path.join(TUNED_DIR, f"{slug}.json"))
        merged.update(_read(_cache_path(slug)))
        _TABLES[slug] = merged
    return _TABLES[slug]


def clear() -> None:
    """Forget the loaded tables (tests; after writing a table in-process)."""
    _TABLES.clear()


def _device_slug(device) -> Optional[str]:
    import torch
    if getattr(device, "type", str(device)) != "cuda":
        return None
    return _slug_of_index(torch.device(device).index or 0)


@functools.lru_cache(maxsize=None)
def _slug_of_index(index: int) -> str:  # once per GPU: this runs on every kernel launch
    import torch
    return gpu_slug(torch.cuda.get_device_name(index))


def _may_tune(device) -> bool:
    import torch
    return (os.environ.get("MEDNEXT_FAST_AUTOTUNE") == "1" and getattr(device, "type", "") == "cuda"
            and not torch.cuda.is_current_stream_capturing())


def choose(kernel: str, launch_key: str, default, space, bench: Optional[Callable] = None, device=None):
    """The configuration for one launch (see the module docstring for the order)."""
    if kernel in FORCED:
        return FORCED[kernel]
    slug = _device_slug(device) if device is not None else None
    if slug is None:
        return default
    found = table(slug).get(launch_key)
    if found is not None:
        return KINDS[kernel](*found)
    if bench is None or not _may_tune(device):
        if bench is not None and os.environ.get("MEDNEXT_FAST_AUTOTUNE") == "1":
            # Tuning was wanted but cannot run now (CUDA-graph capture): keep the default for this launch
            # in this process, so later eager calls do not pick another configuration than the graph.
            table(slug)[launch_key] = default
        return default
    candidates = list(space) + ([default] if default not in space else [])
    timings = [(bench(cfg), i, cfg) for i, cfg in enumerate(candidates)]
    best = min(timings)[2]
    TIMINGS[launch_key] = {"default": next(ms for ms, _, cfg in timings if cfg == default),
                           "candidates": [(cfg, ms) for ms, _, cfg in timings]}
    table(slug)[launch_key] = best
    cache = _cache_path(slug)
    try:
        merged = _read(cache)
        merged[launch_key] = best
        write_table(cache, merged, {"gpu": slug})
    except (OSError, RuntimeError) as err:  # a read-only or full cache must not stop a training step
        warnings.warn(f"mednext_fast: could not save the tuned configuration to {cache} ({err}); it is used "
                      "in this process only", RuntimeWarning, stacklevel=2)
    return best


__all__ = ["ConvConfig", "WgradConfig", "FORCED", "TIMINGS", "choose", "key", "gpu_slug", "table", "clear",
           "write_table"]
