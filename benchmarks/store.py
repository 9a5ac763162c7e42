"""The results CSV: every benchmark run appends its rows to one file, ``benchmarks/results/results.csv``.

One row is one measured cell: one implementation ("column") of one case in one run, with the machine and
software it ran on. Ratios are never stored: ``benchmarks.report`` computes them between rows of the same
run and case only.

    python -m benchmarks.store merge OUT_DIR/results.csv [--csv benchmarks/results/results.csv] [--commit SHA]

merges the rows of another CSV (e.g. the one a GPU suite brought back) into this one, skipping rows
already there.

Fields (empty where they do not apply):
  date          UTC time of the run's start, ISO 8601 (rows imported from the old results folders: the time
                of the commit that added them; extra.source names that commit and file)
  run           id of the run (imported rows: the old folder); the ratios of a case are taken within one run
  device        cpu | cuda
  device_name   CPU model (/proc/cpuinfo) or GPU name
  isa           CPU: the ISA build the C++ extension picked (avx512 / avx2 / default; 'none' if not built);
                CUDA: the compute capability (sm_90)
  threads       torch CPU threads
  commit        git commit of the code measured ('-dirty': uncommitted changes on top)
  python, torch, triton, cuda, cudnn   versions
  suite ... checkpointing   the case (CASE_KEYS)
  column        the implementation (eager, cpp, triton, ...); 'eager' is the baseline of every ratio
  median_ms, iqr_ms, runs   median and interquartile range over `runs` timed runs
  first_call_s  the first (warm-up, compiling) call
  peak_extra_bytes   peak memory above what was allocated before the run (CUDA allocator peak; CPU: rise of
                the resident high-water mark); peak_bytes: the absolute peak
  gflops, gbps  rates against the case's useful FLOPs / compulsory bytes
  pct_of_peak   share of a peak: roofline (ops suite), measured FMA peak (cpp_ops), ...; `extra` names it
  extra         JSON object with anything else a suite records
  skipped       why a cell did not run (errors only; cells cut by a time budget are not written)
  note          settings that change the numbers: allocator, huge pages, ISA cap, plus the run's --note
  command       the command line that produced the row
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import sys

from mednext_fast.atomic import write_text

DEFAULT_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "results.csv")

CASE_KEYS = ("suite", "variant", "kernel", "size", "batch", "channels", "ratio", "level", "op", "mode", "dtype",
             "checkpointing")
ENV_KEYS = ("date", "run", "device", "device_name", "isa", "threads", "commit", "python", "torch", "triton", "cuda",
            "cudnn")
VALUE_KEYS = ("column", "median_ms", "iqr_ms", "runs", "first_call_s", "peak_extra_bytes", "peak_bytes", "gflops",
              "gbps", "pct_of_peak", "extra", "skipped", "note", "command")
FIELDS = ENV_KEYS + CASE_KEYS + VALUE_KEYS
INT_FIELDS = {"threads", "kernel", "size", "batch", "channels", "ratio", "level", "runs", "peak_extra_bytes",
              "peak_bytes", "cudnn"}
FLOAT_FIELDS = {"median_ms", "iqr_ms", "first_call_s", "gflops", "gbps", "pct_of_peak"}
# A row is the same measurement as another when these agree (used by merge to skip duplicates).
IDENTITY = ("run",) + CASE_KEYS + ("column",)


def _format(key: str, value) -> str:
    if value is None:
        return ""
    if key == "extra":
        return json.dumps(value, sort_keys=True, separators=(",", ":")) if value else ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.7g}"
    return str(value)


def _parse(key: str, text: str):
    if text == "":
        return None
    if key == "extra":
        return json.loads(text)
    if key in INT_FIELDS:
        return int(text)
    if key in FLOAT_FIELDS:
        return float(text)
    return text


def _header(text: str) -> list:
    first = text.split("\n", 1)[0]
    return next(csv.reader([first])) if first else []


def to_csv(rows: list, fields: list) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n", extrasaction="raise")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _format(k, row.get(k)) for k in fields})
    return buffer.getvalue()


def read(path: str = DEFAULT_CSV) -> list:
    """Every row of the CSV as a dict with typed values (None where empty); [] if the file is missing."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as handle:
        return [{k: _parse(k, v or "") for k, v in row.items()} for row in csv.DictReader(handle)]


@contextlib.contextmanager
def _locked(path: str):
    """An exclusive lock on the CSV's folder, so two appending runs never lose each other's rows."""
    import fcntl

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def append(rows: list, path: str = DEFAULT_CSV) -> int:
    """Append rows (dicts keyed by FIELDS) to the CSV: read, add, write atomically under a lock. A reader
    or a killed run never sees a torn row. Returns the number of rows written."""
    rows = list(rows)
    unknown = sorted({k for row in rows for k in row} - set(FIELDS))
    if unknown:
        raise KeyError(f"not fields of the results CSV: {unknown} (put them in 'extra')")
    if not rows:
        return 0
    with _locked(path):
        old = ""
        if os.path.exists(path):
            with open(path, newline="") as handle:
                old = handle.read()
        header = _header(old)
        if header == list(FIELDS):
            body = to_csv(rows, list(FIELDS)).split("\n", 1)[1]
            text = old + ("" if old.endswith("\n") or not old else "\n") + body
        else:  # a new file, or one written with other fields: rewrite it with every field
            existing = read(path) if old else []
            extra_fields = [k for k in header if k not in FIELDS]
            text = to_csv(existing + rows, list(FIELDS) + extra_fields)
        write_text(path, text)
    return len(rows)


def identity(row: dict) -> tuple:
    return tuple(_format(k, row.get(k)) for k in IDENTITY)


def merge(source: str, path: str = DEFAULT_CSV, commit: str | None = None) -> int:
    """Append the rows of the CSV ``source`` that ``path`` does not hold yet; fill an empty commit with
    ``commit``. Returns the number of rows added."""
    have = {identity(r) for r in read(path)}
    new = []
    for row in read(source):
        if commit and not row.get("commit"):
            row["commit"] = commit
        if identity(row) not in have:
            new.append({k: v for k, v in row.items() if k in FIELDS})
            have.add(identity(row))
    return append(new, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.store", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    merge_p = sub.add_parser("merge", help="append another CSV's new rows")
    merge_p.add_argument("source")
    merge_p.add_argument("--csv", default=DEFAULT_CSV, help="the CSV to merge into (default: %(default)s)")
    merge_p.add_argument("--commit", default=None, help="commit for rows that have none (a run without .git)")
    args = parser.parse_args(argv)
    added = merge(args.source, args.csv, args.commit)
    print(f"{added} new rows from {args.source} -> {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
