"""Roofline of the fused MedNeXt design: compulsory bytes and FLOPs of every op call, and the lower bound
they put on a device's time.

    python -m benchmarks.roofline --variant S --kernel 5 --gpu H200            # train step, batch 2, 128^3, bf16
    python -m benchmarks.roofline --variant B --kernel 3 --gpu "RTX 4090" --mode fwd --batch 1
    python -m benchmarks.roofline --variant S --kernel 3 --gpu probe            # measure this CUDA device

The fused design is the one the Triton backend implements (docs/architecture.md): per block one
``dwconv_stats`` (depthwise conv + GroupNorm sums) and one ``norm_mlp`` (norm, 1x1x1 expansion, GELU,
1x1x1 compression, residual; the hidden R*C never in memory); in backward ``norm_mlp`` bwd (the hidden
recomputed once), the depthwise input gradient (dgrad, adding the residual's gradient) and weight gradient
(wgrad). Around the blocks: the stem, the down/up blocks' 1x1x1 ``res_conv``, the up block's front pad
and skip add (counted as fused into the up block's ``norm_mlp`` epilogue: no extra pass), the gradient
sum where a skip branches off, the deep-supervision heads with the loss, and the AdamW update.

Compulsory bytes: every activation an op must read or write in HBM once (activations in the autocast
dtype, statistics and parameters fp32); caches are assumed perfect within an op and empty between ops.
Per kernel the time is max(bytes / bandwidth, CUDA-core ops / FP32 FMA rate, tensor-core FLOPs / tensor
peak); the bound is the sum over kernels (no overlap between kernels). CUDA-core ops are the depthwise
FMAs plus the exact-erf GELU's instructions (GELU_FWD_OPS, GELU_BWD_OPS per hidden element; the FP32
FMA rate is also the issue rate of one instruction per lane and clock). 1x1x1 convs run on tensor cores
in bf16/fp16 and on the FMA units in fp32.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

# Vendor peaks, dense (no 2:4 sparsity): HBM GB/s, FP32 (non-tensor) TFLOP/s, BF16 tensor TFLOP/s with FP32
# accumulation. Sources (NVIDIA datasheets / whitepapers):
#   H100 SXM5, H100 PCIe: "NVIDIA H100 Tensor Core GPU" datasheet (3.35 / 2.0 TB/s; FP32 67 / 51 TFLOPS;
#     BF16 Tensor Core 1,979 / 1,513 TFLOPS "with sparsity", halved here; PCIe FP32 rounded 51.2).
#   H100 NVL: same datasheet (3.9 TB/s; FP32 60 TFLOPS; BF16 1,671 TFLOPS sparse).
#   H200 SXM: "NVIDIA H200 Tensor Core GPU" datasheet (4.8 TB/s HBM3e; FP32 67 TFLOPS; BF16 1,979 sparse).
#   A100 SXM4 80 GB / 40 GB: "NVIDIA A100 Tensor Core GPU" datasheet (2,039 / 1,555 GB/s; FP32 19.5 TFLOPS;
#     BF16 Tensor Core 312 TFLOPS dense).
#   RTX 4090: "NVIDIA Ada GPU Architecture" whitepaper, appendix table (1,008 GB/s GDDR6X; FP32 82.6 TFLOPS;
#     FP16/BF16 tensor with FP32 accumulate 165.2 TFLOPS dense).
#   RTX 5090: "NVIDIA RTX Blackwell GPU Architecture" whitepaper, GeForce RTX 5090 table (1,792 GB/s GDDR7;
#     FP32 104.8 TFLOPS; FP16/BF16 tensor with FP32 accumulate 209.5 TFLOPS dense).
# Keys are matched against torch.cuda.get_device_name() in order (the first key contained in it wins).
GPU_PEAKS = {
    "H100 PCIe": (2000, 51.2, 756.0),
    "H100 NVL": (3900, 60.0, 835.5),
    "H100": (3350, 66.9, 989.4),
    "H200": (4800, 66.9, 989.4),
    "A100-SXM4-40GB": (1555, 19.5, 312.0),
    "A100": (2039, 19.5, 312.0),
    "RTX 4090": (1008, 82.6, 165.2),
    "RTX 5090": (1792, 104.8, 209.5),
}
# CUDA-core instructions per hidden element of exact-erf GELU: forward (erf by a polynomial, ~12 FMAs, a
# few selects and the multiplies) and backward (the forward recomputed plus the derivative's exp and
# products). Estimates, not measurements.
GELU_FWD_OPS = 18
GELU_BWD_OPS = 40
ELEMENT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
N_CLASSES = 13


@dataclasses.dataclass(frozen=True)
class Device:
    name: str
    gbps: float          # HBM bandwidth, GB/s
    fp32_tflops: float   # FP32 FMA peak, TFLOP/s (2 FLOPs per FMA)
    tensor_tflops: float | None  # bf16/fp16 tensor-core peak, TFLOP/s (None: no tensor cores)
    source: str = "vendor table"


def gpu(name: str) -> Device:
    """The peaks of a GPU named like torch.cuda.get_device_name() or a key of GPU_PEAKS."""
    for key, (bw, fp32, tensor) in GPU_PEAKS.items():
        if key.lower() in name.lower():
            return Device(key, bw, fp32, tensor)
    raise KeyError(f"no peaks for GPU {name!r}; known: {', '.join(GPU_PEAKS)} (or --gpu probe on a CUDA device)")


def probe(repeats: int = 5) -> Device:
    """Measured peaks of this CUDA device: a 2 GiB copy (bandwidth), an fp32 matmul with TF32 off (FMA
    units) and a bf16 matmul (tensor cores), best of ``repeats``."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("the probe needs a CUDA device")

    def best(fn):
        fastest = float("inf")
        for _ in range(repeats + 1):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            fastest = min(fastest, begin.elapsed_time(end) / 1e3)
        return fastest

    n = 1 << 28
    src = torch.ones(n, device="cuda")
    dst = torch.empty_like(src)
    copy_s = best(lambda: dst.copy_(src))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        a = torch.randn(8192, 8192, device="cuda")
        fp32_s = best(lambda: a @ a)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    b = a.bfloat16()
    bf16_s = best(lambda: b @ b)
    flops = 2 * 8192 ** 3
    return Device(torch.cuda.get_device_name(), 2 * n * 4 / copy_s / 1e9, flops / fp32_s / 1e12,
                  flops / bf16_s / 1e12, source="probe")


@dataclasses.dataclass(frozen=True)
class Kernel:
    """The compulsory work of one op call."""
    name: str             # e.g. "dwconv_stats fwd"
    where: str            # e.g. "enc_block_0.1"
    level: int
    bytes: float
    core_ops: float = 0.0      # CUDA-core FP32 instructions (an FMA is one)
    tensor_flops: float = 0.0  # tensor-core FLOPs (2 per multiply-add)

    def seconds(self, device: Device) -> float:
        return max(self.bytes / (device.gbps * 1e9), self.core_ops / (device.fp32_tflops * 1e12 / 2),
                   self.tensor_flops / (device.tensor_tflops * 1e12) if device.tensor_tflops else 0.0)

    def limiter(self, device: Device) -> str:
        times = dict(memory=self.bytes / (device.gbps * 1e9),
                     fma=self.core_ops / (device.fp32_tflops * 1e12 / 2),
                     tensor=self.tensor_flops / (device.tensor_tflops * 1e12) if device.tensor_tflops else 0.0)
        return max(times, key=times.get)


def _gemm(flops: float, dtype: str) -> dict:
    """Where a 1x1x1 conv's multiply-adds run: tensor cores in bf16/fp16, the FMA units in fp32."""
    return dict(tensor_flops=flops) if dtype != "fp32" else dict(core_ops=flops / 2)


def dwconv_stats(channels: int, v_in: int, v_out: int, kernel: int, dtype: str, pass_: str = "fwd",
                 residual_grad: int = 0, where: str = "", level: int = 0) -> Kernel:
    """Depthwise conv (stride 1: v_in == v_out; stride 2: v_out = v_in / 8; transposed: v_out ~ 8 v_in)
    and its backward passes. fwd reads x, writes y (+ the fp32 (N, C) sums); dgrad reads dy (and the
    ``residual_grad`` channels x v_in elements of the residual's gradient, added on the fly) and writes dx;
    wgrad reads x and dy. Every pass does k^3 FMAs per voxel of the smaller side (each output of a
    strided conv, each input of a transposed one)."""
    e, taps = ELEMENT_BYTES[dtype], kernel ** 3
    weights = 4 * channels * (taps + 1)
    moved = {"fwd": channels * (v_in + v_out), "dgrad": channels * (v_out + v_in) + residual_grad * v_in,
             "wgrad": channels * (v_in + v_out)}[pass_]
    return Kernel(f"dwconv_stats {pass_}", where, level, e * moved + weights, core_ops=taps * channels *
                  min(v_in, v_out))


def norm_mlp(c_in: int, c_out: int, ratio: int, voxels: int, dtype: str, pass_: str = "fwd",
             residual: bool = True, where: str = "", level: int = 0) -> Kernel:
    """GroupNorm apply, expansion C_in -> R*C_in, GELU, compression -> C_out, + residual (C_out channels,
    read in fwd). fwd reads y (and the residual), writes the output; bwd reads dout and y, writes dy
    (the hidden recomputed: 5 GEMMs, GELU forward + derivative)."""
    e, hidden = ELEMENT_BYTES[dtype], ratio * c_in
    weights = 4 * (2 * c_in * hidden + hidden + c_out + 2 * c_in)
    if pass_ == "fwd":
        moved = voxels * (c_in + c_out * (2 if residual else 1))
        flops = 2 * voxels * hidden * (c_in + c_out)
        gelu = GELU_FWD_OPS
    else:
        moved = voxels * (c_out + 2 * c_in)
        flops = 2 * voxels * hidden * (3 * c_in + 2 * c_out)
        gelu = GELU_BWD_OPS
        weights *= 2  # and their gradients written
    gemm = _gemm(flops, dtype)
    return Kernel(f"norm_mlp {pass_}", where, level, e * moved + weights, tensor_flops=gemm.get("tensor_flops", 0.0),
                  core_ops=gelu * hidden * voxels + gemm.get("core_ops", 0.0))


def pointwise(name: str, c_in: int, c_out: int, v_in: int, v_out: int, dtype: str, where: str, level: int,
              in_bytes: int | None = None, extra_bytes: float = 0.0) -> Kernel:
    """A 1x1x1 conv (stem, res_conv, head) or its backward: reads c_in x v_in, writes c_out x v_out."""
    e = ELEMENT_BYTES[dtype]
    moved = (in_bytes or e) * c_in * v_in + e * c_out * v_out + extra_bytes
    return Kernel(name, where, level, moved + 4 * c_in * c_out, **_gemm(2 * c_in * c_out * min(v_in, v_out), dtype))


def _config(variant: str):
    from mednext_fast.configs import variant_config

    config = variant_config(variant)
    ratios = config["exp_r"]
    ratios = [ratios] * 9 if isinstance(ratios, int) else list(ratios)
    return ratios, list(config["block_counts"])


def block_kernels(kernels, where, level, c, ratio, voxels, kernel, dtype, train):
    """Append one stage block's kernels (forward; with ``train`` also its three backward passes)."""
    kernels.append(dwconv_stats(c, voxels, voxels, kernel, dtype, "fwd", where=where, level=level))
    kernels.append(norm_mlp(c, c, ratio, voxels, dtype, "fwd", where=where, level=level))
    if train:
        kernels.append(norm_mlp(c, c, ratio, voxels, dtype, "bwd", where=where, level=level))
        kernels.append(dwconv_stats(c, voxels, voxels, kernel, dtype, "dgrad", residual_grad=c, where=where,
                                    level=level))
        kernels.append(dwconv_stats(c, voxels, voxels, kernel, dtype, "wgrad", where=where, level=level))


GLUES = ("fused", "split")


def model_kernels(variant: str, kernel: int, batch: int = 2, size: int = 128, dtype: str = "bf16",
                  mode: str = "train", n_classes: int = N_CLASSES, in_channels: int = 1, glue: str = "fused") -> list:
    """Every kernel of a forward (mode='fwd', inference) or train step (mode='train': forward, deep-
    supervision loss, backward, AdamW) of a paper variant, in the fused design. glue='split' counts the
    glue as the model code runs it today instead: the up block's front pad and the skip add as passes of
    their own (and the pad's backward slice), the heads writing their logits and the loss reading them in
    fp32 (and the fp32 loss gradient cast back)."""
    if glue not in GLUES:
        raise ValueError(f"glue must be one of {GLUES}, got {glue!r}")
    split = glue == "split"
    ratios, counts = _config(variant)
    train = mode == "train"
    e = ELEMENT_BYTES[dtype]
    widths = [32 * 2 ** i for i in range(5)]
    vox = [batch * (size // 2 ** i) ** 3 for i in range(5)]
    ks = []
    ks.append(pointwise("stem fwd", in_channels, widths[0], vox[0], vox[0], dtype, "stem", 0, in_bytes=4))
    for i in range(4):
        for b in range(counts[i]):
            block_kernels(ks, f"enc_block_{i}.{b}", i, widths[i], ratios[i], vox[i], kernel, dtype, train)
        c, c2, r = widths[i], widths[i + 1], ratios[i + 1]
        where = f"down_{i}"
        ks.append(pointwise("res_conv fwd", c, c2, vox[i + 1], vox[i + 1], dtype, where, i))
        ks.append(dwconv_stats(c, vox[i], vox[i + 1], kernel, dtype, "fwd", where=where, level=i))
        ks.append(norm_mlp(c, c2, r, vox[i + 1], dtype, "fwd", where=where, level=i))
        if train:
            ks.append(norm_mlp(c, c2, r, vox[i + 1], dtype, "bwd", where=where, level=i))
            ks.append(pointwise("res_conv bwd", c2, c, vox[i + 1], vox[i + 1], dtype, where, i,
                                extra_bytes=e * c * vox[i + 1]))  # reads dout and x (strided), writes dx part
            ks.append(dwconv_stats(c, vox[i], vox[i + 1], kernel, dtype, "dgrad", where=where, level=i))
            ks.append(dwconv_stats(c, vox[i], vox[i + 1], kernel, dtype, "wgrad", where=where, level=i))
            # the encoder stage's output gradient: the skip's plus the down block's (read 2, write 1)
            ks.append(Kernel("grad sum", f"skip_{i}", i, 3 * e * c * vox[i]))
    for b in range(counts[4]):
        block_kernels(ks, f"bottleneck.{b}", 4, widths[4], ratios[4], vox[4], kernel, dtype, train)
    heads = [(4, widths[4])]
    for i in reversed(range(4)):
        c2, c, r = widths[i + 1], widths[i], ratios[8 - i]
        where = f"up_{i}"
        ks.append(pointwise("res_conv fwd", c2, c, vox[i + 1], vox[i], dtype, where, i))
        ks.append(dwconv_stats(c2, vox[i + 1], vox[i], kernel, dtype, "fwd", where=where, level=i))
        up = norm_mlp(c2, c, r, vox[i], dtype, "fwd", where=where, level=i)
        if split:  # the pad, then the skip add (read 2, write 1), each a pass of its own
            ks += [up, Kernel("pad fwd", where, i, 2 * e * c * vox[i]),
                   Kernel("skip add", where, i, 3 * e * c * vox[i])]
        else:  # fwd also reads the skip (the add and the front pad are in the epilogue)
            ks.append(dataclasses.replace(up, bytes=up.bytes + e * c * vox[i]))
        if train and split:
            ks.append(Kernel("pad bwd", where, i, 2 * e * c * vox[i]))
        if train:
            ks.append(norm_mlp(c2, c, r, vox[i], dtype, "bwd", where=where, level=i))
            ks.append(pointwise("res_conv bwd", c, c2, vox[i], vox[i + 1], dtype, where, i,
                                extra_bytes=e * c2 * vox[i + 1]))
            ks.append(dwconv_stats(c2, vox[i + 1], vox[i], kernel, dtype, "dgrad", residual_grad=c2, where=where,
                                   level=i))
            ks.append(dwconv_stats(c2, vox[i + 1], vox[i], kernel, dtype, "wgrad", where=where, level=i))
        for b in range(counts[8 - i]):
            block_kernels(ks, f"dec_block_{i}.{b}", i, c, r, vox[i], kernel, dtype, train)
        heads.append((i, c))
    for level, c in heads if train else heads[-1:]:
        v = vox[level]
        # head + loss: reads x, writes the logits (inference) or only the loss partials (train)
        logits = n_classes if split or not train else 0
        ks.append(pointwise("head fwd", c, logits, v, v, dtype, f"out_{level}", level))
        if train and split:  # logits to fp32, the loss reads them; its fp32 gradient is cast back
            ks += [Kernel("loss fwd", f"out_{level}", level, (e + 4 + 4) * n_classes * v),
                   Kernel("loss bwd", f"out_{level}", level, (4 + 4 + e) * n_classes * v)]
            ks.append(pointwise("head bwd", c, c, v, v, dtype, f"out_{level}", level, extra_bytes=e * n_classes * v))
        elif train:  # recompute the logits, their loss gradient, read x for the weight gradient, write dx
            ks.append(pointwise("head+loss bwd", c, c, v, v, dtype, f"out_{level}", level))
    if train:
        ks.append(pointwise("stem bwd", widths[0], 0, vox[0], vox[0], dtype, "stem", 0))  # weight grad only
        params = parameter_count(variant, kernel, n_classes, in_channels)
        # AdamW (fp32): read param, grad, m, v; write param, m, v
        ks.append(Kernel("adamw", "optimizer", -1, 7 * 4 * params, core_ops=12 * params))
    return ks


def parameter_count(variant: str, kernel: int, n_classes: int = N_CLASSES, in_channels: int = 1) -> int:
    import mednext_fast as mf

    model = mf.create_mednext(variant, in_channels, n_classes, kernel_size=kernel, deep_supervision=True)
    return sum(p.numel() for p in model.parameters())


def bound_s(kernels: list, device: Device) -> float:
    """The lower bound: sum over kernels of max(bytes, CUDA-core, tensor-core time)."""
    return sum(k.seconds(device) for k in kernels)


def op_kernels(op: str, level: int, kernel: int, batch: int, size: int, dtype: str, ratio: int = 2,
               mode: str = "fwd") -> list:
    """One stage block's op at a level (channels 32 * 2^level, edge size / 2^level): its forward
    (mode='fwd') or forward and backward passes (mode='train')."""
    c, v = 32 * 2 ** level, batch * (size // 2 ** level) ** 3
    if op == "dwconv_stats":
        passes = ("fwd", "dgrad", "wgrad") if mode == "train" else ("fwd",)
        return [dwconv_stats(c, v, v, kernel, dtype, p, residual_grad=c if p == "dgrad" else 0, level=level)
                for p in passes]
    passes = ("fwd", "bwd") if mode == "train" else ("fwd",)
    return [norm_mlp(c, c, ratio, v, dtype, p, level=level) for p in passes]


def summary(kernels: list, device: Device) -> dict:
    by_op = {}
    for k in kernels:
        key = (k.name, k.level)
        entry = by_op.setdefault(key, dict(calls=0, bytes=0.0, core_ops=0.0, tensor_flops=0.0, seconds=0.0,
                                           limiter=k.limiter(device)))
        entry["calls"] += 1
        entry["bytes"] += k.bytes
        entry["core_ops"] += k.core_ops
        entry["tensor_flops"] += k.tensor_flops
        entry["seconds"] += k.seconds(device)
    return by_op


def format_report(variant, kernel, batch, size, dtype, mode, device: Device, glue: str = "fused") -> str:
    kernels = model_kernels(variant, kernel, batch, size, dtype, mode, glue=glue)
    total = bound_s(kernels, device)
    lines = [f"MedNeXt-{variant} k{kernel} {mode} batch {batch} {size}^3 {dtype}, {glue} glue, on {device.name} "
             f"({device.source}: {device.gbps:.0f} GB/s, FP32 {device.fp32_tflops:.1f} TFLOP/s, tensor "
             f"{device.tensor_tflops or 0:.0f} TFLOP/s)",
             f"lower bound: {total * 1e3:.2f} ms over {len(kernels)} kernels; compulsory traffic "
             f"{sum(k.bytes for k in kernels) / 1e9:.1f} GB ({sum(k.bytes for k in kernels) / device.gbps / 1e6:.2f}"
             f" ms at full bandwidth), CUDA-core {sum(k.core_ops for k in kernels) / 1e12:.2f} T ops, tensor "
             f"{sum(k.tensor_flops for k in kernels) / 1e12:.2f} TFLOP", "",
             "| op | level | calls | GB | CUDA-core Gops | tensor GFLOP | bound ms | limited by |",
             "|---|---|---|---|---|---|---|---|"]
    for (name, level), s in sorted(summary(kernels, device).items(), key=lambda item: (item[0][1], item[0][0])):
        lines.append(f"| {name} | {level if level >= 0 else '-'} | {s['calls']} | {s['bytes'] / 1e9:.3f} | "
                     f"{s['core_ops'] / 1e9:.1f} | {s['tensor_flops'] / 1e9:.1f} | {s['seconds'] * 1e3:.3f} | "
                     f"{s['limiter']} |")
    return "\n".join(lines)


def device_for(name: str) -> Device:
    return probe() if name == "probe" else gpu(name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.roofline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="S", choices=("S", "B", "M", "L"))
    parser.add_argument("--kernel", type=int, default=3, choices=(3, 5, 7))
    parser.add_argument("--gpu", default="H200", help=f"one of {', '.join(GPU_PEAKS)}, or 'probe' (this CUDA GPU)")
    parser.add_argument("--mode", default="train", choices=("train", "fwd"), help="train step or inference forward")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--dtype", default="bf16", choices=tuple(ELEMENT_BYTES))
    parser.add_argument("--glue", default="fused", choices=GLUES,
                        help="fused: pad, skip add and loss inside the ops (default); split: as the model runs today")
    args = parser.parse_args(argv)
    try:
        device = device_for(args.gpu)
    except (KeyError, RuntimeError) as err:
        parser.error(str(err))
    print(format_report(args.variant, args.kernel, args.batch, args.size, args.dtype, args.mode, device, args.glue))
    return 0


if __name__ == "__main__":
    sys.exit(main())
