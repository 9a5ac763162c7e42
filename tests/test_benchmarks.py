"""The benchmark CLI runs a tiny grid on CPU and writes valid JSON, a table and a plot."""
import json
import os

import pytest
import torch

from benchmarks import gpu_suite, report
from benchmarks import run as bench_run


def test_tiny_cpu_grid_writes_json_table_and_plot(tmp_path, capsys):
    out = tmp_path / "bench"
    code = bench_run.main(["--device", "cpu", "--suite", "model,train,ops", "--variants", "S", "--kernels", "3",
                           "--size", "32", "--levels", "0", "--columns", "eager,monai,cpp", "--min-time", "0.05",
                           "--checkpointing", "off", "--out", str(out)])
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    assert data["environment"]["device"] == "cpu" and data["environment"]["torch"]
    rows = data["results"]
    eager = [r for r in rows if r["column"] == "eager"]
    assert {r["suite"] for r in eager} == {"model", "train", "ops"}
    assert all(r["median_s"] > 0 and r["runs"] >= 3 for r in eager)
    assert all(r["speedup_vs_eager"] == pytest.approx(1.0) for r in eager)
    assert any(r["suite"] == "ops" and r["roofline_pct"] > 0 for r in eager)
    train = next(r for r in eager if r["suite"] == "train")
    assert train["epoch_estimate_s"] == pytest.approx(train["median_s"] * 500) and train["paper_epoch_s"] == 117
    for row in rows:
        assert row.get("median_s") or row.get("skipped"), row
    table = (out / "results.md").read_text()
    assert "## model" in table and "| variant=S kernel=3 mode=fwd |" in table
    assert (out / "model.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ratios_are_against_eager_of_the_same_case():
    rows = [dict(suite="model", variant="S", kernel=3, mode="fwd", column="eager", median_s=2.0, peak_extra_bytes=100),
            dict(suite="model", variant="S", kernel=3, mode="fwd", column="triton", median_s=0.5, peak_extra_bytes=25),
            dict(suite="model", variant="S", kernel=5, mode="fwd", column="triton", median_s=1.0)]
    report.add_ratios(rows)
    assert rows[1]["speedup_vs_eager"] == 4.0 and rows[1]["memory_vs_eager"] == 0.25
    assert "speedup_vs_eager" not in rows[2]  # no eager run of that case


def test_cli_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--columns", "triton,eager"])
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--device", "cpu", "--size", "40"])
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--kernels", "4"])


def test_gpu_suite_dry_run_reports_what_it_would_skip(tmp_path, capsys):
    assert gpu_suite.main([str(tmp_path / "suite"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "would run train (weight" in printed and "--suite train" in printed
    if not torch.cuda.is_available():
        assert "skip everything: no CUDA device visible (dry run)" in printed
    assert os.path.isdir(tmp_path / "suite")


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("stride,transposed", [(1, False), (2, False), (2, True)])
def test_cpp_op_flops_count_only_taps_that_hit_the_input(k, stride, transposed):
    from benchmarks.bench_cpp_ops import useful_taps
    n = 9
    ones, w = torch.ones(1, 1, n, n, n, dtype=torch.float64), torch.ones(1, 1, k, k, k, dtype=torch.float64)
    conv = torch.nn.functional.conv_transpose3d if transposed else torch.nn.functional.conv3d
    hits = conv(ones, w, stride=stride, padding=k // 2).sum().item()  # every output sums its useful taps
    assert useful_taps(n, k, stride, transposed) ** 3 == hits


def test_cpp_op_benchmark_reports_share_of_measured_peak(capsys):
    from benchmarks import bench_cpp_ops
    from mednext_fast import cpp_ops
    if not cpp_ops.available()[0]:
        pytest.skip("C++ extension not built")
    threads = torch.get_num_threads()
    try:
        bench_cpp_ops.main(["--size", "8", "--channels", "16", "--kernels", "5", "--ratios", "2", "--threads", "1",
                            "--min-time", "0.01"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "measured FMA peak of 1 thread(s)" in out and "% of peak (out=)" in out and "| cpp out= |" in out
    assert "| dwconv_stats stride1 k=5 |" in out and "| norm_mlp C=16 R=2 +res |" in out
