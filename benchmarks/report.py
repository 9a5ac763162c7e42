"""Benchmark results as JSON, a markdown table with ratios, and PNG plots."""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict

CASE_KEYS = ("suite", "variant", "kernel", "level", "op", "mode", "checkpointing")


def case_of(row: dict) -> tuple:
    return tuple(row.get(k) for k in CASE_KEYS)


def add_ratios(rows: list) -> None:
    """speedup = eager median / this median, memory_ratio = this peak / eager peak, within one case."""
    baseline = {case_of(r): r for r in rows if r["column"] == "eager" and r.get("median_s")}
    for row in rows:
        base = baseline.get(case_of(row))
        if base is None or not row.get("median_s"):
            continue
        row["speedup_vs_eager"] = base["median_s"] / row["median_s"]
        if base.get("peak_extra_bytes") and row.get("peak_extra_bytes") is not None:
            row["memory_vs_eager"] = row["peak_extra_bytes"] / base["peak_extra_bytes"]


def write_text_atomic(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; results are for everyone to read
    os.replace(tmp, path)


def write_json(path: str, info: dict, args: dict, rows: list) -> None:
    write_text_atomic(path, json.dumps(dict(environment=info, arguments=args, results=rows), indent=1, default=str))


def _fmt_case(case: tuple) -> str:
    return " ".join(f"{k}={v}" for k, v in zip(CASE_KEYS[1:], case[1:]) if v is not None)


def markdown(info: dict, rows: list, columns: list) -> str:
    lines = [f"# Benchmark on {info['name']}", "",
             f"torch {info['torch']}, triton {info.get('triton')}, cuda {info.get('cuda')}, "
             f"threads {info['threads']}. Cells: median ms (speed-up vs eager; peak extra MiB). "
             "Ratios come from the same run.", ""]
    by_suite = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        by_suite[row["suite"]][case_of(row)][row["column"]] = row
    for suite, cases in by_suite.items():
        used = [c for c in columns if any(c in cells for cells in cases.values())]
        extra = ["roofline %"] if suite == "ops" else ["est. epoch s (paper)"] if suite == "train" else []
        lines += [f"## {suite}", "", "| case | " + " | ".join(used + extra) + " |",
                  "|---" * (len(used) + len(extra) + 1) + "|"]
        for case, cells in cases.items():
            out = [_fmt_case(case)]
            for column in used:
                out.append(_cell(cells.get(column)))
            if suite == "ops":
                out.append(", ".join(f"{c} {r['roofline_pct']:.0f}" for c, r in cells.items()
                                     if r.get("roofline_pct") is not None))
            if suite == "train":
                out.append(_epoch_cell(cells))
            lines.append("| " + " | ".join(out) + " |")
        lines.append("")
    return "\n".join(lines)


def _epoch_cell(cells: dict) -> str:
    estimates = [f"{c} {r['epoch_estimate_s']:.0f}" for c, r in cells.items() if r.get("epoch_estimate_s")]
    paper = next((r["paper_epoch_s"] for r in cells.values() if r.get("paper_epoch_s")), None)
    return ", ".join(estimates) + (f" (paper {paper})" if paper else "")


def _cell(row) -> str:
    if row is None:
        return ""
    if row.get("skipped"):
        return f"skip: {row['skipped']}"
    notes = []
    if row["column"] != "eager" and row.get("speedup_vs_eager"):
        notes.append(f"{row['speedup_vs_eager']:.2f}x")
    if row.get("peak_extra_bytes") is not None:
        notes.append(f"{row['peak_extra_bytes'] / 2 ** 20:.0f} MiB")
    return f"{row['median_s'] * 1e3:.1f}" + (f" ({'; '.join(notes)})" if notes else "")


def plot(path: str, rows: list, columns: list) -> list:
    """One PNG per suite with kernel sizes: time and peak memory against kernel size, a line per column."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for suite in ("model", "train", "blocks"):
        suite_rows = [r for r in rows if r["suite"] == suite and r.get("median_s")]
        if not suite_rows:
            continue
        groups = sorted({(r["variant"], r.get("mode"), r.get("checkpointing"), r.get("level")) for r in suite_rows},
                        key=str)
        fig, axes = plt.subplots(2, len(groups), figsize=(3.2 * len(groups) + 1, 6), squeeze=False)
        for g, group in enumerate(groups):
            selected = [r for r in suite_rows
                        if (r["variant"], r.get("mode"), r.get("checkpointing"), r.get("level")) == group]
            for column in columns:
                pts = sorted((r["kernel"], r["median_s"], r.get("peak_extra_bytes")) for r in selected
                             if r["column"] == column)
                if not pts:
                    continue
                axes[0][g].plot([p[0] for p in pts], [p[1] * 1e3 for p in pts], marker="o", label=column)
                mem = [(p[0], p[2] / 2 ** 20) for p in pts if p[2] is not None]
                if mem:
                    axes[1][g].plot([m[0] for m in mem], [m[1] for m in mem], marker="o", label=column)
            variant, mode, ckpt, level = group
            title = f"{variant} {mode}" + (f" level {level}" if level is not None else "") + \
                (f" ckpt {'on' if ckpt else 'off'}" if ckpt is not None else "")
            axes[0][g].set_title(title, fontsize=9)
            axes[0][g].set_ylabel("median ms")
            axes[1][g].set_ylabel("peak extra MiB")
            axes[1][g].set_xlabel("kernel size")
            kernels = sorted({r["kernel"] for r in selected})
            axes[0][g].set_xticks(kernels)
            axes[1][g].set_xticks(kernels)
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"{suite}: time and memory vs kernel size")
        fig.tight_layout()
        out = os.path.join(path, f"{suite}.png")
        fig.savefig(out, dpi=90)
        plt.close(fig)
        written.append(out)
    return written
