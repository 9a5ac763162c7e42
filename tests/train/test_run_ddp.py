"""DDP: two gloo processes under torchrun train 2 iterations and end with identical weights."""
import json
import socket
import subprocess
import sys

import pytest
import torch.distributed as dist

from ._run_helpers import RUN_PY, tiny_dataset


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_gloo_ranks_end_identical(tmp_path):
    ds = tiny_dataset(tmp_path / "ds", n_cases=3)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), RUN_PY, "--dataset", ds, "--output", str(out), "--preset", "tiny",
           "--epochs", "1", "--iters-per-epoch", "2", "--threads", "1", "--no-final-validation", "--no-progress",
           "--device", "cpu", "--backend", "torch", "--workers", "0"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    check = json.loads((out / "fold_0" / "ddp_check.json").read_text())
    assert check["world_size"] == 2
    assert check["max_abs_diff"] == 0.0
    log = (out / "training_log.txt").read_text()
    assert "x 2 process(es)" in log
