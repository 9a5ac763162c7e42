"""Compile the Triton kernels for sm_90 (H100/H200) without a GPU, as the JIT would, and report their resources.

    python -m tests.kernels.sm90_compile [--all] [--markdown] [--dtypes bf16,fp32]

Run where TRITON_INTERPRET is unset (``triton.jit`` must build real kernels). The launches are the ones the
ops really make: each op's host code runs on meta tensors at the MedNeXt-S levels (batch 2, 128^3 at level
0, C = 32 * 2^level) with the kernels replaced by a recorder, so every launch keeps its real arguments. Each
is compiled with the JIT's own specialisation of those arguments (16-divisible ints and aligned pointers get
``tt.divisibility = 16``, ints equal to 1 become constants), so the binaries are the ones a GPU would run:
same vector widths, same registers. For each binary ``cuobjdump`` (bundled with Triton) gives registers,
spill stores (STL instructions), shared memory and the width of every global load.

Default: the configurations the kernels use without a tuning table. ``--all`` adds every candidate of the
tuner's search space (kernels/tuning.py), since a table may pick any of them. Exits 1 if a binary fails to
compile, spills, or needs more shared memory than an H100 block may use. ``--markdown`` prints the table
kept in kernels/README.md.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from typing import NamedTuple

SMEM_LIMIT = 227 * 1024  # H100 / H200 opt-in shared memory per block
LEVELS = range(5)
KERNEL_NAMES = {"dwconv_stats": ("_dwconv_kernel", "_grad_total_kernel", "_wgrad_kernel"),
                "norm_mlp": ("_fwd_kernel", "_dx_kernel", "_dw_kernel")}


class Launch(NamedTuple):
    fn: object  # the JITFunction
    args: tuple
    kwargs: dict
    case: str


class Result(NamedTuple):
    case: str
    kernel: str
    config: str
    registers: int
    spill_stores: int
    hot_spills: int
    shared: int
    loads: str


class _Recorder:
    def __init__(self, fn, sink, case):
        self.fn, self.sink, self.case = fn, sink, case

    def __getitem__(self, grid):
        def record(*args, **kwargs):
            self.sink.append(Launch(self.fn, args, kwargs, self.case[0]))
        return record


@contextmanager
def recording(sink: list, case: list):
    """Replace every kernel of the op modules by a recorder appending to ``sink`` (case[0] names the call)."""
    saved = []
    for module_name, names in KERNEL_NAMES.items():
        module = importlib.import_module(f"mednext_fast.kernels.{module_name}")
        for name in names:
            saved.append((module, name, getattr(module, name)))
            setattr(module, name, _Recorder(getattr(module, name), sink, case))
    try:
        yield
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)


def _levels():
    """(level, channels, edge) of MedNeXt-S at 128^3."""
    for level in LEVELS:
        yield level, 32 << level, 128 >> level


def record_launches(dtypes, kernels, everything: bool) -> list:
    """Every kernel launch of the dwconv_stats and norm_mlp ops (forward and backward) at the MedNeXt levels."""
    import torch

    dw = importlib.import_module("mednext_fast.kernels.dwconv_stats")
    nm = importlib.import_module("mednext_fast.kernels.norm_mlp")
    tuning = importlib.import_module("mednext_fast.kernels.tuning")
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    meta = dict(device="meta")
    launches: list = []
    case = [""]
    conv_sets = [(None, None)]
    if everything:  # every candidate the tuner may choose
        conv_sets += list(zip(dw.CONV_SPACE, (dw.WGRAD_SPACE * 3)[:len(dw.CONV_SPACE)]))
    with recording(launches, case):
        for dt in dtypes:
            dtype = torch_dtype[dt]
            for level, c, edge in _levels():
                x = torch.empty(2, c, edge, edge, edge, dtype=dtype, **meta)
                for k in kernels:
                    w, b = torch.empty(c, 1, k, k, k, **meta), torch.empty(c, **meta)
                    modes = [("stride1", 1, False, x, w, b)]
                    if level < 4:  # the down block leaving this level; the up block arriving at it runs its
                        # conv on the 2c channels of the level below (MedNeXtUpBlock(in=2c, out=c))
                        half = torch.empty(2, 2 * c, edge // 2, edge // 2, edge // 2, dtype=dtype, **meta)
                        modes.append(("down", 2, False, x, w, b))
                        modes.append(("up", 2, True, half, torch.empty(2 * c, 1, k, k, k, **meta),
                                      torch.empty(2 * c, **meta)))
                    for conv_cfg, wgrad_cfg in conv_sets:
                        for mode, stride, transposed, inp, w, b in modes:
                            if conv_cfg is not None:
                                tuning.FORCED.update(conv=conv_cfg, wgrad=wgrad_cfg)
                            try:
                                case[0] = f"L{level} C{inp.shape[1]} {mode} k{k} {dt}"
                                y, s1, s2 = dw._forward(inp, w, b, stride, transposed)
                                dw._backward(y, s1, s2, inp, w, y, stride, transposed)
                            finally:
                                tuning.FORCED.clear()
                # norm_mlp of a stride-1 block at R = 4, the widest expansion of any variant (B/M/L).
                case[0] = f"L{level} C{c} mlp R4 {dt}"
                rc = 4 * c
                args = (x, torch.empty(2, c, **meta), torch.empty(2, c, **meta), torch.empty(c, **meta),
                        torch.empty(c, **meta), torch.empty(rc, c, 1, 1, 1, **meta), torch.empty(rc, **meta),
                        torch.empty(c, rc, 1, 1, 1, **meta), torch.empty(c, **meta))
                out = nm._forward(*args, x, 1e-5, 0)
                nm._backward(out, *args[:8], 1e-5, 0)
    return launches


def _specialised(launch: Launch):
    """(signature, constexprs, attrs) as the JIT builds them from the launch's real arguments."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import native_specialize_impl

    fn = launch.fn
    names = fn.arg_names
    sig, constexprs, attrs = {}, {}, {}
    for i, (name, value) in enumerate(zip(names, launch.args)):
        kind, spec = native_specialize_impl(BaseBackend, value, False, True, True)
        sig[name] = kind
        if kind == "constexpr":
            constexprs[(i,)] = spec
        else:
            attrs[(i,)] = BaseBackend.parse_attr(spec)
    for name, value in launch.kwargs.items():
        if name in ("num_warps", "num_stages"):
            continue
        sig[name] = "constexpr"
        constexprs[(names.index(name),)] = value
    return sig, constexprs, attrs


def _tool(name: str) -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


# Report names of the kernels; --allow-spills takes op names (KERNEL_NAMES).
_NAMES = {"_dwconv_kernel": "conv", "_grad_total_kernel": "grad total", "_wgrad_kernel": "wgrad",
          "_fwd_kernel": "mlp fwd", "_dx_kernel": "mlp dx", "_dw_kernel": "mlp dW"}
_WIDTH = {"128": "128b", "64": "64b", "U16": "16b", "S16": "16b", "U8": "8b", "S8": "8b"}


def load_widths(sass: str) -> str:
    """Global loads by width, e.g. '22x128b 2x32b'."""
    counts: dict = {}
    for mods in re.findall(r"\bLDG((?:\.\w+)*)", sass):
        width = next((_WIDTH[m] for m in mods.split(".") if m in _WIDTH), "32b")
        counts[width] = counts.get(width, 0) + 1
    order = ("128b", "64b", "32b", "16b", "8b")
    return " ".join(f"{counts[w]}x{w}" for w in order if w in counts)


def spills(sass: str) -> tuple:
    """(spill stores, spill loads and stores inside a loop) of a SASS listing.

    ptxas sometimes parks a value or two in local memory around a loop to reach a register count with more
    warps per SM (a few bytes per thread, once per program or per outer-loop step): harmless. A spill inside
    an innermost loop (between a backward branch's target and the branch, with no loop inside) is paid on
    every iteration: that is the one that fails.
    """
    code = [(int(addr, 16), text) for addr, text in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    loops = []
    for addr, text in code:
        # BRA, BRA.U (uniform branches on loop counters in uniform registers), with or without a predicate
        target = re.search(r"\bBRA(?:\.\w+)*\s+(?:!?U?P[0-7T]\s*,\s*)?`?\(?0x([0-9a-f]+)", text)
        if target and int(target.group(1), 16) < addr:
            loops.append((int(target.group(1), 16), addr))
    # Innermost loops only: a spill in an outer loop (once per kd of the conv) costs what one outside does.
    inner = [(lo, hi) for lo, hi in loops if not any(lo <= a and b <= hi and (a, b) != (lo, hi) for a, b in loops)]
    stores = sum(bool(re.search(r"\bSTL\b", text)) for _, text in code)
    hot = sum(bool(re.search(r"\b(?:STL|LDL)\b", text)) and any(lo <= addr <= hi for lo, hi in inner)
              for addr, text in code)
    return stores, hot


def resources(cubin: bytes) -> tuple:
    """(registers, spill stores, spills inside loops, global load widths) of a cubin, from cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    return (regs, *spills(sass), load_widths(sass))


def _config_text(kwargs: dict) -> str:
    keep = ("TD", "TH", "TW", "BC", "BS", "KP", "BM", "BH", "BCI", "BCO", "num_warps", "num_stages")
    return " ".join(f"{k.replace('num_', '')}={kwargs[k]}" for k in keep if k in kwargs)


def compile_all(launches: list):
    """Compile each distinct binary once; yields (Result, error or None) per distinct binary."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    seen = {}
    for launch in launches:
        sig, constexprs, attrs = _specialised(launch)
        warps, stages = launch.kwargs.get("num_warps", 4), launch.kwargs.get("num_stages", 3)
        ident = (launch.fn.fn.__name__, tuple(sorted(sig.items())), tuple(sorted(constexprs.items())),
                 tuple(sorted((k, str(v)) for k, v in attrs.items())), warps, stages)
        if ident in seen:
            continue
        seen[ident] = True
        name = _NAMES[launch.fn.fn.__name__]
        if name == "conv":
            name = "conv fwd" if launch.kwargs.get("STATS") else "conv dgrad"
        config = _config_text(launch.kwargs)
        try:
            src = ASTSource(launch.fn, sig, constexprs=constexprs, attrs=attrs)
            kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                    options=dict(num_warps=warps, num_stages=stages))
            regs, stores, hot, loads = resources(kernel.asm["cubin"])
            yield Result(launch.case, name, config, regs, stores, hot, kernel.metadata.shared, loads), None
        except Exception as err:  # report every kernel, not only the first failure
            yield Result(launch.case, name, config, -1, -1, -1, -1, ""), f"{type(err).__name__}: {str(err)[:600]}"


def markdown(results: list) -> str:
    lines = ["| launch (the first that builds it) | kernel | config | registers | spill stores (in inner loops) | "
             "shared memory | global loads |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.case} | {r.kernel} | {r.config} | {r.registers} | {r.spill_stores} ({r.hot_spills}) | "
                     f"{r.shared} B | {r.loads} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="also every candidate of the tuner's search space")
    parser.add_argument("--dtypes", default="bf16,fp32", help="activation dtypes, of bf16,fp16,fp32")
    parser.add_argument("--kernels", default="3,5,7", help="depthwise kernel sizes")
    parser.add_argument("--allow-spills", default="", metavar="OPS",
                        help="ops (dwconv_stats, norm_mlp) whose spills in inner loops are reported, not failed")
    parser.add_argument("--markdown", action="store_true", help="print the README table")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the interpreter builds no GPU kernels")
        return 2
    lenient = set(filter(None, args.allow_spills.split(",")))
    launches = record_launches(args.dtypes.split(","), [int(v) for v in args.kernels.split(",")], args.all)
    failed, results = 0, []
    for result, error in compile_all(launches):
        results.append(result)
        hot = result.hot_spills > 0 and ("norm_mlp" if result.kernel.startswith("mlp") else "dwconv_stats") \
            not in lenient
        bad = error or (hot and "spills in an inner loop") or (result.shared > SMEM_LIMIT and "shared memory")
        failed += bool(bad)
        status = f"FAIL ({bad})" if bad else ("SPILL" if result.hot_spills > 0 else "OK")
        if not args.markdown or bad:
            print(f"{status:5} {result.case:26} {result.kernel:10} {result.config:44} regs {result.registers:3} "
                  f"spill stores {result.spill_stores} ({result.hot_spills} in inner loops) shared {result.shared} B "
                  f"loads {result.loads}", flush=True)
    if args.markdown:
        print(markdown(results))
    print(f"{len(results)} distinct binaries from {len(launches)} launches, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
