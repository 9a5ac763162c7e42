"""Atomic file writes: a reader, or a run killed mid-write, never sees a torn file.

Every writer here writes a temporary file in the destination folder, flushes it to disk and renames it
onto the destination (``os.replace`` is atomic within one file system).
"""
from __future__ import annotations

import json
import os


def write_via(path: str, writer) -> None:
    """Call ``writer(tmp_path)`` to write the file, then move it onto ``path``.

    The temporary name ends with ``path``'s own name, so writers that pick a format from the extension
    (nibabel's ``.nii.gz``) write the right one.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        writer(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as handle:
            handle.write(text)
    write_via(path, write)


def write_json(path: str, obj, **dump_kwargs) -> None:
    """``obj`` as indented JSON (NaN and inf allowed, as Python's json writes them)."""
    write_text(path, json.dumps(obj, indent=1, **dump_kwargs) + "\n")


def save_torch(obj, path: str) -> None:
    """``torch.save(obj)`` written atomically."""
    import torch

    write_via(path, lambda tmp: torch.save(obj, tmp))
