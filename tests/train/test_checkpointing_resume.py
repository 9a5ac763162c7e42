"""A run killed mid-epoch (SIGKILL) resumes from its last epoch and ends exactly like an uninterrupted run."""
import json
import os
import signal
import subprocess
import time

import pytest
import torch

from mednext_fast.train import checkpointing
from mednext_fast.train.schedule import poly_lr

from ._run_helpers import run_cmd, tiny_dataset

EPOCHS = 3


def _args(ds, out):
    return run_cmd("--dataset", ds, "--output", out, "--preset", "tiny", "--epochs", EPOCHS, "--iters-per-epoch",
                   8, "--threads", "1", "--no-final-validation", "--no-progress", "--backend", "torch",
                   "--workers", "0")


def _checkpoint_epoch(fold):
    try:
        return checkpointing.load(str(fold / checkpointing.LATEST))["epoch"]
    except (FileNotFoundError, ValueError):
        return 0


def test_kill_mid_epoch_then_resume(tmp_path):
    ds = tiny_dataset(tmp_path / "ds", n_cases=3)
    out = tmp_path / "killed"
    fold = out / "fold_0"
    proc = subprocess.Popen(_args(ds, out), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 90
        while _checkpoint_epoch(fold) < 1 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # inside epoch 1: its 8 iterations outlast this sleep
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = torch.load(fold / checkpointing.LATEST, weights_only=False)["epoch"]
    assert 1 <= killed_at < EPOCHS
    assert not (fold / checkpointing.FINAL).exists()

    res = subprocess.run([*_args(ds, out), "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (fold / "training_log.txt").read_text()
    assert f"next epoch {killed_at}," in log

    # every checkpoint loads, and the epoch counter and LR are where they should be
    latest = checkpointing.load(str(fold / checkpointing.LATEST))
    final = checkpointing.load(str(fold / checkpointing.FINAL))
    checkpointing.load(str(fold / checkpointing.BEST))
    assert latest["epoch"] == final["epoch"] == EPOCHS
    assert latest["lr"] == pytest.approx(poly_lr(EPOCHS - 1, EPOCHS, 1e-3))
    history = json.loads((fold / "progress.json").read_text())
    assert history["lr"] == pytest.approx([poly_lr(e, EPOCHS, 1e-3) for e in range(EPOCHS)])

    # exact resume: the same weights as a run that was never interrupted
    ref_out = tmp_path / "uninterrupted"
    res = subprocess.run(_args(ds, ref_out), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    ref = checkpointing.load(str(ref_out / "fold_0" / checkpointing.FINAL))["model"]
    for key, value in ref.items():
        assert torch.equal(value, final["model"][key]), key


def test_corrupt_checkpoint_is_reported(tmp_path):
    path = tmp_path / "checkpoint_latest.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        checkpointing.load(str(path))
    os.remove(path)
    with pytest.raises(FileNotFoundError):
        checkpointing.load(str(path))
