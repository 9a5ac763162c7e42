"""Kernel tests run on CUDA when present, else in the Triton interpreter on CPU tensors
(TRITON_INTERPRET is set by tests/conftest.py, before anything imports the kernels)."""
import importlib.util

import pytest
import torch

if importlib.util.find_spec("triton") is None:  # no triton: nothing here can run
    collect_ignore_glob = ["test_*.py"]

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bf16/fp16 and determinism)")
