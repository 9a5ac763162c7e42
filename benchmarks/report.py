"""Tables and plots from the results CSV (benchmarks/results/results.csv, see benchmarks.store).

    python -m benchmarks.report                                     # the latest run of every case
    python -m benchmarks.report --device cpu --suite model --size 128 --note "glibc*"
    python -m benchmarks.report --commit 4b21314 --all-runs         # every run of one commit
    python -m benchmarks.report --run RUN_ID --plots /tmp/plots     # one run, with PNG plots
    python -m benchmarks.report --format pairs --columns cpp        # one row per case: cpp vs eager
    python -m benchmarks.report --update README.md */README.md docs/performance.md   # the generated tables

Filters take comma-separated alternatives, each a glob pattern ("4b21314*", "*Xeon*"). By default, for
each case and setting (device, ISA, threads, note) only the latest run that measured it is shown.

Grid cells: median (speed-up vs the baseline column; peak extra memory; share of the peak named in the
CSV). Speed-up = baseline median / this median, memory = this peak / the baseline's, always between rows
of the same run and case, never across runs. "vs best baseline": each of our columns (triton, cpp and
their variants such as triton_compile) against the fastest column of the same run and case that is not
ours (eager, eager_cudnn, eager_cl3d, compile, monai, onnxruntime, openvino, ...). The train suite adds
an epoch estimate (250 iterations of batch 2, as in the paper's Table 3) beside the paper's own seconds
per epoch.

--update regenerates every table between a `<!-- results: OPTIONS -->` line and the next
`<!-- /results -->` line of the named markdown files; OPTIONS are this command's options without the
dashes (`suite=model device=cpu format=pairs columns=cpp`), and `|` joins the rows of several filter sets
(`device=cuda suite=train | device=cpu suite=model size=128`).
"""
from __future__ import annotations

import argparse
import fnmatch
import functools
import os
import re
import shlex
import subprocess
import sys
from collections import defaultdict

from benchmarks import store

# Paper Table 3: seconds per training epoch (250 iterations, batch 2, 128^3), kernel 3 and 5.
PAPER_EPOCH_S = {("S", 3): 117, ("S", 5): 364, ("B", 3): 120, ("B", 5): 381,
                 ("M", 3): 213, ("M", 5): 668, ("L", 3): 267, ("L", 5): 735}
FILTER_KEYS = ("device", "device_name", "isa", "threads", "commit", "run", "note", "column") + store.CASE_KEYS
MIN_MEMORY_BYTES = 64 * 2 ** 20
PART_COLUMNS = ("triton_dw", "triton_mlp")  # bench_block_gpu: one op of the block alone
SERIES_KEYS = ("device", "device_name", "isa", "threads", "note")  # a setting whose latest run is shown
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMN_ORDER = ("eager", "eager_cudnn", "eager_cl3d", "eager_cl3d_cudnn", "compile", "monai", "onnxruntime",
                "openvino", "triton", "triton_compile", "triton_cl", "triton_dw", "triton_mlp", "cpp",
                "cpp_out", "cpp_ncdhw", "cpp_gemm", "cpp_bf16", "loader")


def case_of(row: dict) -> tuple:
    return tuple(row.get(k) for k in store.CASE_KEYS)


def measured(row: dict) -> bool:
    return row.get("median_ms") is not None


def ratios(rows: list, baseline: str = "eager") -> dict:
    """id(row) -> (speed-up, memory ratio) against the baseline column of the same run and case (none for
    PART_COLUMNS, which time a part of the case)."""
    base = {(r.get("run"), case_of(r)): r for r in rows if r.get("column") == baseline and measured(r)}
    out = {}
    for row in rows:
        ref = base.get((row.get("run"), case_of(row)))
        if ref is None or not measured(row) or not row["median_ms"] or row["column"] in PART_COLUMNS:
            continue
        memory = None
        if ref.get("peak_extra_bytes") and row.get("peak_extra_bytes") is not None:
            memory = row["peak_extra_bytes"] / ref["peak_extra_bytes"]
        out[id(row)] = (ref["median_ms"] / row["median_ms"], memory)
    return out


OURS_PREFIXES = ("triton", "cpp")  # our columns (and their variants: triton_compile, cpp_out, ...)
NOT_BASELINES = PART_COLUMNS + ("loader",)
# Suites whose grids get the "vs best baseline" column (the op micro-benchmarks compare parts, not what a
# user would run); the pairs format always has it.
BEST_SUITES = ("model", "train", "blocks")


def is_ours(column: str) -> bool:
    return (column or "").split("_")[0] in OURS_PREFIXES


def best_baselines(rows: list) -> dict:
    """id(row) -> (speed-up, baseline column) for each of our measured rows against the fastest baseline
    (every measured column that is not ours) of the same run and case."""
    fastest = {}
    for row in rows:
        if measured(row) and row["median_ms"] and not is_ours(row["column"]) and row["column"] not in NOT_BASELINES:
            key = (row.get("run"), case_of(row))
            if key not in fastest or row["median_ms"] < fastest[key]["median_ms"]:
                fastest[key] = row
    out = {}
    for row in rows:
        ref = fastest.get((row.get("run"), case_of(row)))
        if ref is not None and measured(row) and row["median_ms"] and is_ours(row["column"]) \
                and row["column"] not in PART_COLUMNS:
            out[id(row)] = (ref["median_ms"] / row["median_ms"], ref["column"])
    return out


def fmt_best(best) -> str:
    return f"{best[0]:.2f}x vs {best[1]}" if best else ""


def _matches(value, patterns: list) -> bool:
    text = "" if value is None else str(value)
    return any(fnmatch.fnmatchcase(text, p) for p in patterns)


def select(rows: list, filters: dict) -> list:
    """Rows whose every filtered field matches one of its comma-separated glob patterns."""
    checks = [(k, [p.strip() for p in str(v).split(",")]) for k, v in filters.items() if v not in (None, "")]
    return [r for r in rows if all(_matches(r.get(k), pats) for k, pats in checks)]


def latest(rows: list, baseline: str = "eager", columns: list | None = None) -> list:
    """For each setting and case, the rows of the newest run that measured a displayed column other than
    the baseline (or, with none such, any column)."""
    runs = defaultdict(dict)  # (setting, case) -> run -> (date, has a compared column)
    for row in rows:
        if not measured(row):
            continue
        key = (tuple(row.get(k) for k in SERIES_KEYS), case_of(row))
        compared = row["column"] != baseline and (columns is None or row["column"] in columns)
        date, had = runs[key].get(row["run"], (row.get("date") or "", False))
        runs[key][row["run"]] = (date, had or compared)
    commit_of = {r.get("run"): r.get("commit") for r in rows}
    chosen = {}
    for key, candidates in runs.items():
        best = max((had, date) for date, had in candidates.values())
        tied = [run for run, (date, had) in candidates.items() if (had, date) == best]
        # Runs with the same date (imported ones carry the time of the commit that added them): the one
        # that measured the later commit.
        chosen[key] = max(tied, key=lambda run: (_ancestors(commit_of[run]), run)) if len(tied) > 1 else tied[0]
    return [r for r in rows
            if chosen.get((tuple(r.get(k) for k in SERIES_KEYS), case_of(r))) == r.get("run")]


def run_order(row: dict) -> tuple:
    """Chronological: the date, then (for runs of one date) the later commit, then the run id."""
    return (row.get("date") or "", _ancestors(row.get("commit")), row.get("run") or "")


@functools.lru_cache(maxsize=None)
def _ancestors(commit: str | None) -> int:
    """How many commits lead to ``commit`` in this repository's history (0 when unknown)."""
    if not commit:
        return 0
    try:
        done = subprocess.run(["git", "rev-list", "--count", commit.removesuffix("-dirty")], cwd=REPO,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 0
    return int(done.stdout) if done.returncode == 0 and done.stdout.strip().isdigit() else 0


def ordered_columns(rows: list, wanted: list | None = None) -> list:
    present = {r["column"] for r in rows}
    if wanted:
        return [c for c in wanted if c in present]
    return sorted(present, key=lambda c: (COLUMN_ORDER.index(c) if c in COLUMN_ORDER else len(COLUMN_ORDER), c))


def fmt_time(ms: float) -> str:
    if ms >= 1000:
        return f"{ms / 1e3:.2f} s"
    return f"{ms:.1f} ms" if ms >= 10 else f"{ms:.2f} ms"


def fmt_bytes(n: int) -> str:
    return f"{n / 2 ** 30:.1f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MiB"


CASE_LABELS = {"kernel": "k{}", "size": "{}^3", "batch": "batch {}", "channels": "C={}", "ratio": "R={}",
               "level": "level {}", "checkpointing": "ckpt {}"}


CASE_DISPLAY = ("op", "variant", "mode", "kernel", "channels", "ratio", "level", "size", "batch", "dtype",
                "checkpointing")


def fmt_case(case: tuple, skip=("suite",)) -> str:
    values = dict(zip(store.CASE_KEYS, case))
    return " ".join(CASE_LABELS.get(key, "{}").format(values[key]) for key in CASE_DISPLAY
                    if values.get(key) is not None and key not in skip)


def _sources(rows: list) -> tuple:
    """Numbered sources (run settings and command) of the rows, and run -> number."""
    runs = {}
    for row in sorted(rows, key=run_order):
        runs.setdefault(row["run"], row)
    numbers = {run: i + 1 for i, run in enumerate(runs)}
    lines = []
    for run, row in runs.items():
        versions = f"torch {row.get('torch')}" + (f", Triton {row['triton']}" if row.get("triton") and
                                                   row.get("device") == "cuda" else "")
        versions += f", CUDA {row['cuda']}" if row.get("cuda") else ""
        threads = f", {row['threads']} threads" if row.get("threads") else ""
        where = f"{row.get('device_name')} ({row.get('isa')}{threads})"
        note = f"; {row['note']}" if row.get("note") else ""
        lines.append(f"- [{numbers[run]}] {where}, commit {row.get('commit') or '?'}, {(row.get('date') or '')[:10]}, "
                     f"{versions}{note}: `{row.get('command')}`")
    return lines, numbers


def _cell(row: dict | None, ratio) -> str:
    if row is None:
        return ""
    if not measured(row):
        why = row.get("skipped") or ""
        return why[:70] if why.startswith("skip:") else f"failed: {why[:60]}"
    notes = []
    if ratio is not None and row["column"] != "eager":
        notes.append(f"{ratio[0]:.2f}x")
    if "compile" in row["column"] and row.get("first_call_s") is not None:
        notes.append(f"compile {row['first_call_s']:.0f} s")
    if row.get("peak_extra_bytes") is not None:
        notes.append(fmt_bytes(row["peak_extra_bytes"]))
    if row.get("pct_of_peak") is not None:
        bound = (row.get("extra") or {}).get("peak") == "roofline bound"
        notes.append(f"{row['pct_of_peak']:.0f} % of {'bound' if bound else 'peak'}")
    return fmt_time(row["median_ms"]) + (f" ({'; '.join(notes)})" if notes else "")


def _epoch_cell(cells: dict) -> str:
    estimates = [f"{c} {r['median_ms'] / 1e3 * 250 * 2 / (r.get('batch') or 2):.0f}" for c, r in cells.items()
                 if measured(r)]
    any_row = next(iter(cells.values()))
    paper = PAPER_EPOCH_S.get((any_row.get("variant"), any_row.get("kernel")))
    return ", ".join(estimates) + (f" (paper {paper})" if paper else "")


def grid(rows: list, columns: list | None = None, baseline: str = "eager", pool: list | None = None) -> str:
    """One table per suite: a line per case (and run), a cell per column, and our columns against the
    fastest baseline of the case (looked up among ``pool``, default ``rows``)."""
    rat = ratios(rows, baseline)
    best = best_baselines(pool if pool is not None else rows)
    lines = []
    source_lines, numbers = _sources(rows)
    by_suite = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        by_suite[row["suite"]][(case_of(row), row["run"])][row["column"]] = row
    for suite, cases in by_suite.items():
        used = ordered_columns([r for cells in cases.values() for r in cells.values()], columns)
        extra = ["est. epoch s (paper)"] if suite == "train" else []
        with_best = suite in BEST_SUITES and any(id(r) in best for cells in cases.values() for r in cells.values())
        extra += ["vs best baseline"] if with_best else []
        src = ["src"] if len(numbers) > 1 else []
        lines += [f"{suite}:", "", "| case | " + " | ".join(used + extra + src) + " |",
                  "|---" * (len(used) + len(extra) + len(src) + 1) + "|"]
        for (case, run), cells in sorted(cases.items(), key=lambda item: (numbers[item[0][1]], _sort_key(item[0][0]))):
            out = [fmt_case(case)] + [_cell(cells.get(c), rat.get(id(cells.get(c)))) for c in used]
            if suite == "train":
                out.append(_epoch_cell(cells))
            if with_best:
                out.append("; ".join(f"{c} {fmt_best(best[id(cells[c])])}" for c in used
                                     if c in cells and id(cells[c]) in best))
            if src:
                out.append(f"[{numbers[run]}]")
            lines.append("| " + " | ".join(out) + " |")
        lines.append("")
    return "\n".join(lines + source_lines)


def pairs(rows: list, columns: list | None = None, baseline: str = "eager", show_memory: bool = True,
          pool: list | None = None) -> str:
    """One line per case and compared column: baseline time, its time, speed-up and memory ratio (left
    blank where the baseline's peak is under MIN_MEMORY_BYTES, and n/a where the allocator kept freed
    memory: the CPU high-water mark then misses reused memory)."""
    rat = ratios(rows, baseline)
    best = best_baselines(pool if pool is not None else rows)
    source_lines, numbers = _sources(rows)
    base = {(r["run"], case_of(r)): r for r in rows if r["column"] == baseline and measured(r)}
    lines = ["| device | case | column | " + f"{baseline} | time | speed-up vs {baseline} | "
             f"peak memory vs {baseline} | vs best baseline | src |", "|---" * 9 + "|"]
    compared = [r for r in rows if r["column"] != baseline and measured(r) and id(r) in rat
                and (not columns or r["column"] in columns)]
    order = {c: i for i, c in enumerate(columns or COLUMN_ORDER)}
    compared.sort(key=lambda r: (r["device"], r["device_name"], r.get("note") or "", r["suite"], run_order(r),
                                 _sort_key(case_of(r)), order.get(r["column"], 99)))
    for row in compared:
        speed, memory = rat[id(row)]
        ref = base[(row["run"], case_of(row))]
        mem = ""
        if "heap kept" in (row.get("note") or ""):
            mem = "n/a (heap kept)"
        elif show_memory and memory is not None and ref["peak_extra_bytes"] >= MIN_MEMORY_BYTES:
            mem = f"{memory:.2f} ({fmt_bytes(ref['peak_extra_bytes'])} -> {fmt_bytes(row['peak_extra_bytes'])})"
        lines.append(f"| {row['device_name']} ({row['isa']}) | {fmt_case(case_of(row))} | "
                     f"{row['column']} | {fmt_time(ref['median_ms'])} | {fmt_time(row['median_ms'])} | "
                     f"{speed:.2f}x | {mem} | {fmt_best(best.get(id(row)))} | [{numbers[row['run']]}] |")
    return "\n".join(lines + [""] + source_lines)


VARIANT_ORDER = "SBML"


def _sort_key(case: tuple) -> tuple:
    values = dict(zip(store.CASE_KEYS, case))
    if values.get("variant") in tuple(VARIANT_ORDER):
        values["variant"] = VARIANT_ORDER.index(values["variant"])
    ordered = [values["suite"]] + [values[k] for k in CASE_DISPLAY]
    return tuple((0, v) if isinstance(v, (int, float)) else (1, str(v)) for v in ordered)


def table(rows: list, options: dict) -> str:
    """The table for a set of options (the CLI's and the README markers'): filters (FILTER_KEYS; or
    ``clauses``, a list of filter dicts whose matches are joined), format, baseline, columns, all_runs,
    memory."""
    options = dict(options)
    fmt = options.pop("format", None) or "grid"
    baseline = options.pop("baseline", None) or "eager"
    columns = options.pop("columns", None)
    columns = [c.strip() for c in columns.split(",")] if columns else None
    all_runs = options.pop("all_runs", False)
    show_memory = str(options.pop("memory", "yes")).lower() not in ("no", "off", "false", "0")
    clauses = options.pop("clauses", None) or [options]
    for clause in clauses:
        unknown = set(clause) - set(FILTER_KEYS)
        if unknown:
            raise ValueError(f"unknown filters {sorted(unknown)}; choose from {', '.join(FILTER_KEYS)}")
    picked = {id(r): r for clause in clauses for r in select(rows, clause)}
    chosen = [r for r in rows if id(r) in picked]
    if columns:
        chosen = [r for r in chosen if r["column"] in columns or r["column"] == baseline]
    if not all_runs:
        chosen = latest(chosen, baseline, columns)
    if not chosen:
        return "(no rows match)"
    if fmt == "pairs":  # "vs best baseline" looks at every column of the run and case, shown or not
        return pairs(chosen, columns, baseline, show_memory, pool=rows)
    return grid(chosen, columns, baseline, pool=rows)


MARKER = re.compile(r"^<!-- results:(?P<spec>.*?)-->\n.*?^<!-- /results -->$", re.M | re.S)


GLOBAL_OPTIONS = ("format", "baseline", "columns", "memory")


def parse_spec(spec: str) -> dict:
    """`key=value ...` options; `|` separates clauses of filters whose matches are joined."""
    options, clauses = {}, [{}]
    for item in shlex.split(spec):
        if item == "|":
            clauses.append({})
        elif item == "all_runs":
            options["all_runs"] = True
        else:
            key, _, value = item.partition("=")
            key = key.replace("-", "_")
            (options if key in GLOBAL_OPTIONS else clauses[-1])[key] = value
    options["clauses"] = clauses
    return options


def update_text(text: str, rows: list) -> str:
    def fill(match):
        spec = match.group("spec").strip()
        return f"<!-- results: {spec} -->\n{table(rows, parse_spec(spec))}\n<!-- /results -->"
    return MARKER.sub(fill, text)


def update_files(paths: list, rows: list) -> list:
    """Regenerate the marked tables of each file; returns the files that changed."""
    from mednext_fast.atomic import write_text

    changed = []
    for path in paths:
        with open(path) as handle:
            text = handle.read()
        new = update_text(text, rows)
        if new != text:
            write_text(path, new)
            changed.append(path)
    return changed


def _without_kernel(row: dict) -> tuple:
    return tuple(None if k == "kernel" else row.get(k) for k in store.CASE_KEYS)


def plot(path: str, rows: list, columns: list | None = None) -> list:
    """One PNG per suite with kernel sizes: time and peak memory against kernel size, a line per column
    (and run, where the rows come from several)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(path, exist_ok=True)
    written = []
    several_runs = len({r["run"] for r in rows}) > 1
    for suite in sorted({r["suite"] for r in rows}):
        suite_rows = [r for r in rows if r["suite"] == suite and measured(r) and r.get("kernel")]
        if not suite_rows:
            continue
        groups = sorted({_without_kernel(r) for r in suite_rows}, key=_sort_key)
        fig, axes = plt.subplots(2, len(groups), figsize=(3.2 * len(groups) + 1, 6), squeeze=False)
        for g, group in enumerate(groups):
            selected = [r for r in suite_rows if _without_kernel(r) == group]
            lines = sorted({(r["column"], r["run"]) for r in selected})
            for column, run in lines:
                if columns and column not in columns:
                    continue
                pts = sorted((r["kernel"], r["median_ms"], r.get("peak_extra_bytes")) for r in selected
                             if r["column"] == column and r["run"] == run)
                label = f"{column} ({run[:15]})" if several_runs else column
                axes[0][g].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
                mem = [(p[0], p[2] / 2 ** 20) for p in pts if p[2] is not None]
                if mem:
                    axes[1][g].plot([m[0] for m in mem], [m[1] for m in mem], marker="o", label=label)
            axes[0][g].set_title(fmt_case(group), fontsize=8)
            axes[0][g].set_ylabel("median ms")
            axes[1][g].set_ylabel("peak extra MiB")
            axes[1][g].set_xlabel("kernel size")
            kernels = sorted({r["kernel"] for r in selected})
            axes[0][g].set_xticks(kernels)
            axes[1][g].set_xticks(kernels)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{suite}: time and memory vs kernel size")
        fig.tight_layout()
        out = os.path.join(path, f"{suite}.png")
        fig.savefig(out, dpi=90)
        plt.close(fig)
        written.append(out)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", default=store.DEFAULT_CSV, help="the results CSV (default: %(default)s)")
    for key in FILTER_KEYS:
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--columns", default=None, help="columns to show, in order (default: all)")
    parser.add_argument("--baseline", default="eager", help="the column every ratio is against (default: eager)")
    parser.add_argument("--format", choices=("grid", "pairs"), default="grid")
    parser.add_argument("--all-runs", action="store_true", help="every matching run, not only the latest per case")
    parser.add_argument("--memory", default="yes", help="pairs format: 'no' leaves out the memory column's ratios")
    parser.add_argument("--plots", default=None, help="also write PNG plots to this folder")
    parser.add_argument("--update", nargs="+", default=None, metavar="FILE",
                        help="regenerate the marked tables in these markdown files")
    parser.epilog = "filters: " + ", ".join(f"--{k.replace('_', '-')}" for k in FILTER_KEYS)
    args = parser.parse_args(argv)
    rows = store.read(args.csv)
    if args.update:
        changed = update_files(args.update, rows)
        print("updated: " + (", ".join(changed) if changed else "nothing (tables already current)"))
        return 0
    options = {k: getattr(args, k) for k in FILTER_KEYS if getattr(args, k) is not None}
    options.update(format=args.format, baseline=args.baseline, columns=args.columns, all_runs=args.all_runs,
                   memory=args.memory)
    print(table(rows, options))
    if args.plots:
        chosen = select(rows, {k: v for k, v in options.items() if k in FILTER_KEYS})
        chosen = chosen if args.all_runs else latest(chosen, args.baseline)
        for out in plot(args.plots, chosen, options["columns"].split(",") if options["columns"] else None):
            print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
