"""What the benchmark compares: implementations ("columns") of a model, a block or an op, built alike.

Columns, the first being the baseline of every "speed-up vs eager":
  eager       our PyTorch reference (backend='torch', the official topology), NCDHW
  eager_cudnn the same with torch.backends.cudnn.benchmark=True (as nnU-Net and the official trainer run)
  eager_cl3d  the reference with model and input in channels_last_3d
  eager_cl3d_cudnn  the same with cudnn.benchmark=True
  compile     torch.compile(fullgraph=True) of the reference (forward, or the whole train step's model);
              its compile time is the first call (first_call_s), apart from the timed runs
  monai       MONAI's MedNeXt (where installed)
  onnxruntime the reference exported once per case with torch.onnx.export, run by ONNX Runtime (CPU)
  openvino    the same ONNX file compiled by OpenVINO (CPU, fp32)
  triton      our fused Triton backend (CUDA)
  triton_compile  the triton backend under torch.compile(fullgraph=True)
  cpp         our fused C++ backend (CPU inference)

On CUDA every column except eager and eager_cl3d runs with cudnn.benchmark=True (set around each call,
so interleaved columns do not leak it to each other); eager and eager_cl3d keep PyTorch's default
(False), the baseline of the earlier runs.

Every column but ours (OURS) is a baseline; "vs best baseline" is our time against the fastest of them
in the same run and case (benchmarks.report). The ONNX columns need the optional extra `[bench]`; where a
package is missing the column is skipped with the reason.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile

import torch

import mednext_fast as mf
from mednext_fast import backends, ops

COLUMNS = ("eager", "eager_cudnn", "eager_cl3d", "eager_cl3d_cudnn", "compile", "monai", "onnxruntime", "openvino",
           "triton", "triton_compile", "cpp")
CUDNN_DEFAULT = ("eager", "eager_cl3d")  # columns left at cudnn.benchmark=False on CUDA
OURS = ("triton", "cpp", "triton_compile", "cpp_compile")  # every other column is a baseline
ONNX_COLUMNS = ("onnxruntime", "openvino")
# Columns that make sense per suite (MONAI and channels_last are whole-model/block choices; the ONNX
# runtimes run the whole model's forward).
SUITE_COLUMNS = {"ops": ("eager", "compile", "triton", "cpp"),
                 "blocks": ("eager", "eager_cudnn", "eager_cl3d", "eager_cl3d_cudnn", "compile", "triton",
                            "triton_compile", "cpp"),
                 "model": COLUMNS, "train": tuple(c for c in COLUMNS if c not in ONNX_COLUMNS)}
# Largest relative error (max |diff| / max |eager|) an exported model may show before it is timed.
ONNX_MAX_REL_ERR = 1e-4
N_CLASSES = 13
DS_WEIGHTS = [1 / 2 ** i for i in range(5)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Skip(Exception):
    """This column cannot run here; the message says why."""


def autocast(device: str, dtype: str):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=DTYPES[dtype])


def check_column(column: str, device: str, training: bool) -> None:
    if column.endswith("_cudnn") and device != "cuda":
        raise Skip("cudnn.benchmark is a CUDA setting")
    if column in ONNX_COLUMNS:
        if device != "cpu":
            raise Skip(f"{column} is a CPU baseline here")
        if training:
            raise Skip(f"{column} runs inference only")
        for package in ("onnx", column):
            try:
                __import__(package)
            except ImportError:
                raise Skip(f"{package} is not installed (pip install -e .[bench])")
    if column == "monai":
        try:
            import monai.networks.nets.mednext  # noqa: F401
        except ImportError:
            raise Skip("monai is not installed")
    if column in ("triton", "triton_compile"):
        if device != "cuda":
            raise Skip("Triton kernels run on CUDA only")
        if not backends.is_available("triton"):
            raise Skip("backend='triton' is not available here")
    if column == "cpp":
        if device != "cpu":
            raise Skip("the C++ kernels run on CPU only")
        if training:
            raise Skip("the C++ kernels are inference-only")
        if not backends.is_available("cpp"):
            raise Skip("the C++ extension is not built")


def _to_device(module, x, column, device):
    module = module.to(device)
    x = x.to(device)
    if column.startswith("eager_cl3d"):
        module = module.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    if column in ("compile", "triton_compile"):
        module = torch.compile(module, fullgraph=True)
    return module, x


def with_cudnn_setting(fn, column: str, device: str):
    """fn run with this column's cudnn.benchmark (see the module docstring); the previous value restored."""
    if device != "cuda":
        return fn
    wanted = column not in CUDNN_DEFAULT

    def run():
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = wanted
        try:
            fn()
        finally:
            torch.backends.cudnn.benchmark = before
    run.extra = dict(getattr(fn, "extra", None) or {}, cudnn_benchmark=wanted)
    return run


def build_model(column: str, variant: str, kernel: int, device: str, checkpointing: bool, batch: int, size: int):
    """The model of a column and its input; every column of a case gets the same weights and input (seeded)."""
    check_column(column, device, training=False)
    torch.manual_seed(0)
    if column == "monai":
        if checkpointing:
            raise Skip("MONAI's MedNeXt has no gradient checkpointing")
        from monai.networks.nets.mednext import create_mednext
        model = create_mednext(variant, spatial_dims=3, in_channels=1, out_channels=N_CLASSES,
                               kernel_size=kernel, deep_supervision=True)
    else:
        backend = {"triton_compile": "triton"}.get(column, column if column in ("triton", "cpp") else "torch")
        model = mf.create_mednext(variant, 1, N_CLASSES, kernel_size=kernel, deep_supervision=True,
                                  checkpoint_style="outside_block" if checkpointing else None, backend=backend)
    x = torch.randn(batch, 1, size, size, size, generator=torch.Generator().manual_seed(1))
    return _to_device(model, x, column, device)


_EXPORTS: dict = {}  # (variant, kernel, batch, size) -> (path of the exported ONNX file, eager outputs, input)


def _temp_dir() -> str:
    if "dir" not in _EXPORTS:
        _EXPORTS["dir"] = tempfile.mkdtemp(prefix="mednext-onnx-")
        atexit.register(shutil.rmtree, _EXPORTS["dir"], True)
    return _EXPORTS["dir"]


EXPORT_SIZE = 32  # the ONNX file is traced at this edge with dynamic batch and spatial axes


def export_onnx(variant: str, kernel: int, batch: int, size: int):
    """The reference model (the eager column's weights and input) exported once per case with the
    TorchScript exporter (torch.onnx.export(dynamo=False): no onnxscript needed), traced on a small input
    with dynamic batch and spatial axes (tracing at 128^3 held ~20 GB); also returns the eager outputs of
    the case's input, the reference the runtimes are checked against."""
    key = (variant, kernel, batch, size)
    if key not in _EXPORTS:
        import warnings

        model, x = build_model("eager", variant, kernel, "cpu", False, batch, size)
        model.eval()
        path = os.path.join(_temp_dir(), f"{variant}_k{kernel}_b{batch}_{size}.onnx")
        small = torch.randn(1, x.shape[1], EXPORT_SIZE, EXPORT_SIZE, EXPORT_SIZE)
        axes = {0: "n", 2: "d", 3: "h", 4: "w"}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            outs = model(small)
            names = [f"out{i}" for i in range(1 if isinstance(outs, torch.Tensor) else len(outs))]
            torch.onnx.export(model, (small,), path, dynamo=False, opset_version=17, input_names=["x"],
                              output_names=names, dynamic_axes={name: axes for name in ["x"] + names})
        with torch.inference_mode():
            outs = model(x)
        outs = [outs] if isinstance(outs, torch.Tensor) else list(outs)
        _EXPORTS[key] = (path, [o.numpy() for o in outs], x.numpy())
    return _EXPORTS[key]


def rel_err(outs, refs) -> float:
    """max |out - ref| / max |ref| over every output (deep-supervision heads included)."""
    import numpy as np

    return max(float(np.abs(o - r).max() / max(np.abs(r).max(), 1e-30)) for o, r in zip(outs, refs))


def build_onnx_forward(column: str, variant: str, kernel: int, device: str, batch: int, size: int, dtype: str):
    """A forward of the exported reference in ONNX Runtime or OpenVINO (fp32, torch's thread count),
    checked against eager before it is timed; run.extra holds the check."""
    check_column(column, device, training=False)
    if dtype != "fp32":
        raise Skip(f"{column} column is fp32 only")
    path, refs, x = export_onnx(variant, kernel, batch, size)
    threads = torch.get_num_threads()
    if column == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

        def infer():
            return session.run(None, {"x": x})
        version = ort.__version__
    else:
        import openvino as ov

        compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                         "INFERENCE_PRECISION_HINT": "f32",
                                                         "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()

        def infer():
            result = request.infer({0: x})
            return [result[out] for out in compiled.outputs]
        version = ov.__version__
    err = rel_err(infer(), refs)
    if not err <= ONNX_MAX_REL_ERR:
        raise RuntimeError(f"{column} output differs from eager: rel. error {err:.2e} > {ONNX_MAX_REL_ERR:g}")

    def run():
        infer()
    run.extra = dict(rel_err_vs_eager=float(f"{err:.3g}"), runtime_version=version, exporter="torchscript",
                     opset=17)
    return run


def forward_fn(model, x, device, dtype):
    model.eval()

    def run():
        with torch.inference_mode(), autocast(device, dtype):
            model(x)
    return run


def train_step_fn(model, x, device, dtype):
    """Forward, deep-supervision loss, backward and AdamW step (the paper's optimiser settings)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-4, weight_decay=3e-5)
    scaler = torch.amp.GradScaler(device, enabled=dtype == "fp16")

    def run():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            outs = model(x)
            outs = [outs] if isinstance(outs, torch.Tensor) else outs
            loss = sum(w * o.float().square().mean() for w, o in zip(DS_WEIGHTS, outs))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return run


def build_block(column: str, channels: int, ratio: int, kernel: int, device: str, batch: int, size: int,
                training: bool):
    check_column(column, device, training)
    block = mf.MedNeXtBlock(channels, channels, ratio, kernel, do_res=True)
    block.backend = {"triton_compile": "triton"}.get(column, column if column in ("triton", "cpp") else "torch")
    x = torch.randn(batch, channels, size, size, size)
    return _to_device(block, x, column, device)


def block_fn(block, x, device, dtype, training):
    if not training:
        return forward_fn(block, x, device, dtype)
    x = x.requires_grad_(True)

    def run():
        with autocast(device, dtype):
            out = block(x)
        out.float().sum().backward()
    return run


def build_op(column: str, op: str, channels: int, ratio: int, kernel: int, device: str, batch: int,
             size: int, dtype: str):
    check_column(column, device, training=False)
    impl = ops if column in ("eager", "compile") else backends.load(column).ops
    fn = getattr(impl, op)
    if column == "compile":
        fn = torch.compile(fn)
    tensor_dtype = DTYPES[dtype] if device == "cuda" else torch.float32
    make = dict(device=device, dtype=tensor_dtype)
    hidden = ratio * channels
    if op == "dwconv_stats":
        x = torch.randn(batch, channels, size, size, size, **make)
        w = torch.randn(channels, 1, kernel, kernel, kernel, device=device) * 0.1
        b = torch.randn(channels, device=device)
        args = (x, w.to(tensor_dtype), b.to(tensor_dtype))
    else:
        y = torch.randn(batch, channels, size, size, size, **make)
        s1 = y.float().sum((2, 3, 4))
        s2 = y.float().square().sum((2, 3, 4))
        args = (y, s1, s2, torch.ones(channels, **make), torch.zeros(channels, **make),
                torch.randn(hidden, channels, **make) * 0.1, torch.zeros(hidden, **make),
                torch.randn(channels, hidden, **make) * 0.1, torch.zeros(channels, **make), y)

    def run():
        with torch.inference_mode():
            fn(*args)
    return run
