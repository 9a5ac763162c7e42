"""Shared helpers of the training-loop tests: a tiny synthetic dataset and the run.py / predict.py commands."""
import os
import sys

TRAIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "train")
RUN_PY = os.path.join(TRAIN_DIR, "run.py")
PREDICT_PY = os.path.join(TRAIN_DIR, "predict.py")


def tiny_dataset(root, n_cases=4, seed=0):
    from mednext_fast.train.data_bridge import write_synthetic
    # The pipeline's MR phantoms at 26x30x22 voxels: smaller than the 32^3 patch, not divisible by 16.
    return write_synthetic(str(root), n_cases=n_cases, seed=seed, shape=(26, 30, 22))


def run_cmd(*args):
    return [sys.executable, RUN_PY, *map(str, args)]


def predict_cmd(*args):
    return [sys.executable, PREDICT_PY, *map(str, args)]


def one_thread():
    """Generator for an autouse fixture: torch on one thread during the test, so OpenMP threads do not
    contend for the cores with other jobs on a small shared machine."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
