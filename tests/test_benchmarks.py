"""The benchmark CLIs append rows to one results CSV; the report reads them back with ratios per run and case."""
import os

import pytest
import torch

from benchmarks import device_info, gpu_suite, report, store
from benchmarks import run as bench_run

PERSIST_CSV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "results",
                           "results.csv")


def _row(run, column, median_ms, kernel=3, peak=None, date="2026-12-01", **extra):
    row = dict(date=date, run=run, device="cpu", device_name="Test CPU", isa="avx512", threads=2, commit="abc1234",
               suite="model", variant="S", kernel=kernel, size=64, batch=1, mode="fwd", dtype="fp32", column=column,
               median_ms=median_ms, peak_extra_bytes=peak, note="glibc default allocator", command="python -m x")
    row.update(extra)
    return row


def test_tiny_cpu_grid_appends_rows_and_a_second_run_appends_more(tmp_path, capsys):
    csv_path, out = tmp_path / "results.csv", tmp_path / "scratch"
    argv = ["--device", "cpu", "--suite", "model,train,ops", "--variants", "S", "--kernels", "3", "--size", "32",
            "--levels", "0", "--columns", "eager,monai,cpp", "--min-time", "0.05", "--checkpointing", "off",
            "--csv", str(csv_path), "--out", str(out), "--note", "test run"]
    assert bench_run.main(argv) == 0
    rows = store.read(str(csv_path))
    assert rows and all(set(r) == set(store.FIELDS) for r in rows)
    eager = [r for r in rows if r["column"] == "eager"]
    assert {r["suite"] for r in eager} == {"model", "train", "ops"}
    assert all(r["median_ms"] > 0 and r["runs"] >= 3 and r["iqr_ms"] >= 0 for r in eager)
    assert all(r["device"] == "cpu" and r["torch"] == torch.__version__ and r["threads"] >= 1 for r in rows)
    assert all(r["isa"] == device_info.isa("cpu") and r["note"].endswith("test run") for r in rows)
    assert all(r["command"].startswith("python -m benchmarks.run --device cpu") for r in rows)
    assert len({r["run"] for r in rows}) == 1
    assert not any(r["column"] == "monai" and r["median_ms"] is None for r in rows)  # skipped cells are not written
    assert any(r["suite"] == "ops" and r["pct_of_peak"] > 0 and r["extra"]["peak"] == "roofline bound" for r in eager)
    train = next(r for r in eager if r["suite"] == "train")
    assert train["checkpointing"] == "off" and train["mode"] == "train"
    printed = capsys.readouterr().out
    assert "model:" in printed and "| S fwd k3 32^3 batch 1 fp32 |" in printed and "est. epoch s (paper)" in printed
    assert (out / "model.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / "results.md").exists()

    assert bench_run.main(argv[:-6] + ["--csv", str(csv_path), "--suite", "model"]) == 0
    again = store.read(str(csv_path))
    assert again[:len(rows)] == rows and len(again) > len(rows)
    assert len({r["run"] for r in again}) == 2


def test_append_keeps_rows_and_reads_back_types(tmp_path):
    path = str(tmp_path / "r.csv")
    store.append([_row("r1", "eager", 2000.0, peak=100, extra={"a": 1}), _row("r1", "cpp", 250.5, peak=25)], path)
    store.append([_row("r2", "eager", 1000.0)], path)
    rows = store.read(path)
    assert [r["run"] for r in rows] == ["r1", "r1", "r2"]
    assert rows[0]["median_ms"] == 2000.0 and rows[0]["kernel"] == 3 and rows[0]["extra"] == {"a": 1}
    assert rows[1]["peak_extra_bytes"] == 25 and rows[2]["peak_extra_bytes"] is None
    with pytest.raises(KeyError):
        store.append([dict(_row("r3", "eager", 1.0), speedup=2.0)], path)


def test_append_rewrites_a_file_with_other_fields(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("run,column,median_ms,legacy\nr0,eager,5,x\n")
    store.append([_row("r1", "eager", 1.0)], str(path))
    rows = store.read(str(path))
    assert [r["run"] for r in rows] == ["r0", "r1"] and rows[0]["legacy"] == "x" and rows[0]["median_ms"] == 5.0


def test_merge_skips_rows_already_there_and_fills_the_commit(tmp_path):
    main, other = str(tmp_path / "main.csv"), str(tmp_path / "other.csv")
    store.append([_row("r1", "eager", 1.0)], main)
    store.append([_row("r1", "eager", 1.0), _row("g1", "triton", 2.0, commit=None)], other)
    assert store.merge(other, main, commit="def5678") == 1
    rows = store.read(main)
    assert len(rows) == 2 and rows[1]["commit"] == "def5678"
    assert store.merge(other, main) == 0


def test_ratios_are_within_one_run_and_case():
    rows = [_row("r1", "eager", 2000.0, peak=100), _row("r1", "cpp", 500.0, peak=25),
            _row("r1", "cpp", 1000.0, kernel=5),  # no eager of k5 in r1
            _row("r2", "eager", 1000.0, kernel=5)]  # another run: never a baseline for r1
    got = report.ratios(rows)
    assert got[id(rows[1])] == (4.0, 0.25) and got[id(rows[0])] == (1.0, 1.0)
    assert id(rows[2]) not in got


def test_latest_keeps_the_newest_run_per_case_and_setting():
    rows = [_row("old", "eager", 3000.0, date="2026-11-27"), _row("old", "cpp", 1000.0, date="2026-11-27"),
            _row("new", "eager", 2000.0, date="2026-12-01"), _row("new", "cpp", 400.0, date="2026-12-01"),
            _row("eager-only", "eager", 1900.0, date="2026-12-02"),
            _row("heap", "eager", 1000.0, date="2026-11-27", note="heap kept: MALLOC_MMAP_MAX_=0"),
            _row("heap", "cpp", 500.0, date="2026-11-27", note="heap kept: MALLOC_MMAP_MAX_=0")]
    chosen = report.latest(rows)
    assert sorted({r["run"] for r in chosen}) == ["heap", "new"]
    text = report.table(rows, dict(format="pairs", columns="cpp", note="glibc*"))
    assert "| 2.00 s | 400.0 ms | 5.00x |" in text and "heap" not in text
    assert "- [1] Test CPU (avx512, 2 threads), commit abc1234" in text and "`python -m x`" in text


def test_grid_and_markers_regenerate_tables_from_the_csv(tmp_path):
    path = str(tmp_path / "r.csv")
    store.append([_row("r1", "eager", 2000.0, peak=2 ** 30), _row("r1", "cpp", 500.0, peak=2 ** 28)], path)
    rows = store.read(path)
    grid = report.grid(rows)
    assert "| S fwd k3 64^3 batch 1 fp32 | 2.00 s (1.0 GiB) | 500.0 ms (4.00x; 256 MiB) |" in grid
    doc = tmp_path / "README.md"
    doc.write_text("intro\n<!-- results: suite=model format=pairs columns=cpp -->\nold table\n<!-- /results -->\nend\n")
    assert report.update_files([str(doc)], rows) == [str(doc)]
    text = doc.read_text()
    assert "old table" not in text and "| 4.00x | 0.25 (1.0 GiB -> 256 MiB) |" in text and text.endswith("end\n")
    assert report.update_files([str(doc)], rows) == []  # already current
    assert report.main(["--csv", path, "--suite", "model", "--plots", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "model.png").exists()


def test_readme_tables_match_the_results_csv():
    root = os.path.dirname(PERSIST_CSV)
    rows = store.read(PERSIST_CSV)
    docs = [os.path.join(root, "..", "..", name) for name in
            ("README.md", "benchmarks/README.md", "csrc/README.md", "kernels/README.md", "docs/performance.md")]
    for doc in docs:
        with open(doc) as handle:
            text = handle.read()
        assert report.update_text(text, rows) == text, f"{doc}: run python -m benchmarks.report --update ..."


def test_cli_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--columns", "triton,eager"])
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--device", "cpu", "--size", "40"])
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--kernels", "4"])


def test_settings_note_names_the_allocator(monkeypatch):
    for key in device_info.HEAP_KEPT + device_info.NOTED + ("LD_PRELOAD",):
        monkeypatch.delenv(key, raising=False)
    assert device_info.settings_note("cpu") == "glibc default allocator"
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")
    assert device_info.settings_note("cpu", "x") == "heap kept: MALLOC_MMAP_MAX_=0; THP_MEM_ALLOC_ENABLE=1; x"
    monkeypatch.setenv("MEDNEXT_FAST_COMMIT", "0123abc")
    assert device_info.commit() == "0123abc"


def test_gpu_suite_dry_run_reports_what_it_would_skip(tmp_path, capsys):
    assert gpu_suite.main([str(tmp_path / "suite"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "would run train (weight" in printed and "--suite train" in printed
    assert "-m benchmarks.bench_block_gpu --quick" in printed
    if not torch.cuda.is_available():
        assert "skip everything: no CUDA device visible (dry run)" in printed
    assert os.path.isdir(tmp_path / "suite")


def test_gpu_block_rows_carry_the_case_and_the_error_check():
    from benchmarks import bench_block_gpu
    args = bench_block_gpu.parse_args(["--quick"])
    env = dict(run="g1", device="cuda", device_name="NVIDIA H200", isa="sm_90")
    rows = [dict(level=0, C=32, edge=128, N=2, R=2, k=3, mode="fwd", column="triton", median_ms=2.8,
                 peak_extra_bytes=10, saved_for_backward_bytes=None, model_tflops=14.7, model_gbps=475.0,
                 roofline_fraction=0.099),
            dict(level=0, k=3, R=2, mode="fwdbwd", column="eager", error="RuntimeError('oom')")]
    out = bench_block_gpu.csv_rows(env, args, rows, dict(triton_rel_err=1e-3, eager_rel_err=2e-3))
    assert out[0]["channels"] == 32 and out[0]["size"] == 128 and out[0]["ratio"] == 2 and out[0]["kernel"] == 3
    assert out[0]["pct_of_peak"] == pytest.approx(9.9) and out[0]["extra"]["max_rel_err_vs_fp32"] == 1e-3
    assert out[1]["skipped"].startswith("error: RuntimeError") and "median_ms" not in out[1]
    assert set().union(*out) <= set(store.FIELDS)


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("stride,transposed", [(1, False), (2, False), (2, True)])
def test_cpp_op_flops_count_only_taps_that_hit_the_input(k, stride, transposed):
    from benchmarks.bench_cpp_ops import useful_taps
    n = 9
    ones, w = torch.ones(1, 1, n, n, n, dtype=torch.float64), torch.ones(1, 1, k, k, k, dtype=torch.float64)
    conv = torch.nn.functional.conv_transpose3d if transposed else torch.nn.functional.conv3d
    hits = conv(ones, w, stride=stride, padding=k // 2).sum().item()  # every output sums its useful taps
    assert useful_taps(n, k, stride, transposed) ** 3 == hits


def test_cpp_op_benchmark_reports_share_of_measured_peak(tmp_path, capsys):
    from benchmarks import bench_cpp_ops
    from mednext_fast.backends import cpp
    if not cpp.available()[0]:
        pytest.skip("C++ extension not built")
    threads = torch.get_num_threads()
    csv_path = str(tmp_path / "ops.csv")
    try:
        bench_cpp_ops.main(["--size", "8", "--channels", "16", "--kernels", "5", "--ratios", "2", "--threads", "1",
                            "--min-time", "0.01", "--csv", csv_path])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "measured FMA peak of 1 thread(s)" in out and "% of peak (cpp_out)" in out and "| cpp_out |" in out
    assert "| dwconv_stats stride1 k5 |" in out and "| norm_mlp +res R=2 |" in out
    rows = store.read(csv_path)
    conv = [r for r in rows if r["op"] == "dwconv_stats"]
    assert {r["column"] for r in conv} == {"eager", "eager_cl3d", "cpp", "cpp_out", "cpp_ncdhw"}
    assert all(r["suite"] == "cpp_ops" and r["channels"] == 16 and r["size"] == 8 and r["threads"] == 1 for r in rows)
    cpp_row = next(r for r in conv if r["column"] == "cpp")
    assert cpp_row["pct_of_peak"] > 0 and cpp_row["extra"]["peak"] == "measured FMA peak"


def test_vs_best_baseline_takes_the_fastest_non_ours_column_of_the_same_run_and_case():
    rows = [_row("r1", "eager", 2000.0), _row("r1", "onnxruntime", 700.0), _row("r1", "openvino", 600.0),
            _row("r1", "cpp", 500.0), _row("r1", "cpp_out", 400.0),
            _row("r1", "eager", 900.0, kernel=5), _row("r1", "cpp", 300.0, kernel=5),  # only eager in k5
            _row("r2", "openvino", 100.0), _row("r2", "cpp", 50.0, kernel=5),  # r2: no baseline of k5
            _row("r1", "triton_dw", 10.0), _row("r1", "monai", None, skipped="error: oom")]
    best = report.best_baselines(rows)
    assert best[id(rows[3])] == (pytest.approx(1.2), "openvino")
    assert best[id(rows[4])] == (pytest.approx(1.5), "openvino")
    assert best[id(rows[6])] == (pytest.approx(3.0), "eager")
    assert id(rows[8]) not in best and id(rows[9]) not in best and id(rows[1]) not in best
    assert report.is_ours("triton_compile") and not report.is_ours("eager_cl3d_cudnn")
    text = report.table(rows, dict(format="pairs", columns="cpp"))
    assert "| 4.00x |" in text and "| 1.20x vs openvino |" in text  # the best is found among hidden columns
    grid = report.grid([r for r in rows if r["run"] == "r1"])
    assert "vs best baseline" in grid and "cpp 1.20x vs openvino; cpp_out 1.50x vs openvino" in grid


def test_gpu_cells_report_the_share_of_their_roofline_bound():
    from benchmarks import roofline
    args = bench_run.parse_args(["--device", "cpu", "--suite", "train", "--variants", "S", "--kernels", "5"])
    args.device, args.dtype, args.size, args.batch = "cuda", "bf16", 128, 2
    info = dict(name="NVIDIA H200", peaks=device_info.peaks("cuda", "NVIDIA H200"))
    case = dict(variant="S", kernel=5, mode="train", checkpointing=False)
    row = dict(median_ms=200.0)
    bench_run.annotate(row, "train", case, {}, args, info)
    bound = roofline.bound_s(roofline.model_kernels("S", 5, 2, 128, "bf16", "train"), roofline.gpu("H200"))
    assert row["pct_of_peak"] == pytest.approx(100 * bound / 0.2) and row["extra"]["peak"] == "roofline bound"
    assert row["extra"]["bound_ms"] == pytest.approx(bound * 1e3, rel=1e-3) and row["extra"]["peak_gbps"] == 4800
    block = dict(median_ms=1.0)
    bench_run.annotate(block, "blocks", dict(level=0, kernel=3, mode="fwd+bwd"), dict(channels=32, ratio=2, size=128),
                       args, info)
    assert 0 < block["pct_of_peak"] < 100
    cpu_args = bench_run.parse_args(["--device", "cpu"])
    untouched = dict(median_ms=5.0)
    bench_run.annotate(untouched, "model", dict(variant="S", kernel=3), {}, cpu_args, info)
    assert "pct_of_peak" not in untouched  # CPU cells: only the ops suite has a bound


def test_cudnn_benchmark_is_set_per_column_around_each_call():
    from benchmarks import cases
    seen = []
    before = torch.backends.cudnn.benchmark
    for column in ("eager", "eager_cudnn", "compile", "eager_cl3d"):
        cases.with_cudnn_setting(lambda: seen.append(torch.backends.cudnn.benchmark), column, "cuda")()
    assert seen == [False, True, True, False] and torch.backends.cudnn.benchmark == before
    assert cases.with_cudnn_setting(print, "eager_cudnn", "cpu") is print
    with pytest.raises(cases.Skip):
        cases.check_column("eager_cudnn", "cpu", training=False)
