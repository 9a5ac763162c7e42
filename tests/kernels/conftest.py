"""Kernel tests run on CUDA when present, else in the Triton interpreter on CPU tensors
(TRITON_INTERPRET is set by tests/conftest.py, before anything imports the kernels)."""
import importlib.util

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bf16/fp16 and determinism)")


def _interpreter_blocker():
    """Why the Triton interpreter cannot run the kernels here (None when it can)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if DEVICE == "cuda":
        return None
    import numpy
    import triton
    version = tuple(int(v) for v in triton.__version__.split(".")[:2])
    numpy_version = tuple(int(v) for v in numpy.__version__.split(".")[:2])
    if version < (3, 7) and numpy_version >= (2, 4):
        # Triton 3.6's interpreter turns scalar kernel arguments into 1-element arrays and calls int() on them,
        # which numpy 2.4 refuses: every loop over a runtime bound fails. Its compiled GPU path is unaffected.
        return (f"Triton {triton.__version__}'s interpreter needs numpy < 2.4 (found {numpy.__version__}); "
                "the interpreter suite is tested on Triton 3.7 and 3.9")
    return None


BLOCKER = _interpreter_blocker()
if BLOCKER == "triton is not installed":  # nothing here can run
    collect_ignore_glob = ["test_*.py"]


def pytest_collection_modifyitems(config, items):
    if BLOCKER is None:
        return
    skip = pytest.mark.skip(reason=BLOCKER)
    for item in items:
        if "tests/kernels/" in str(item.fspath).replace("\\", "/") and "sm90_compile" not in str(item.fspath):
            item.add_marker(skip)
