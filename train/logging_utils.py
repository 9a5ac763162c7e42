"""Run logging: a plain-text log file (rank 0), console echo, a per-epoch progress plot (PNG), and the
progress bars."""
from __future__ import annotations

import datetime
import json
import os
import sys

from mednext_fast.atomic import write_json, write_via


class RunLog:
    """Appends timestamped lines to ``<folder>/training_log.txt`` and keeps per-epoch metrics in
    ``progress.json`` so a resumed run continues the same curves."""

    def __init__(self, folder: str, enabled: bool = True, echo: bool = True):
        self.folder, self.enabled, self.echo = folder, enabled, echo
        self.history: dict = {}
        if enabled:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, "progress.json")
            if os.path.isfile(path):
                with open(path) as handle:
                    self.history = json.load(handle)

    def __call__(self, *parts) -> None:
        if not self.enabled:
            return
        line = f"{datetime.datetime.now().isoformat(timespec='seconds')}: " + " ".join(str(p) for p in parts)
        with open(os.path.join(self.folder, "training_log.txt"), "a") as handle:
            handle.write(line + "\n")
        if self.echo:
            print(line, file=sys.stderr if os.environ.get("MEDNEXT_LOG_STDERR") else sys.stdout, flush=True)

    def record(self, epoch: int, **values) -> None:
        """Store the metrics of ``epoch`` (0-based), dropping any later epochs left by a killed run."""
        if not self.enabled:
            return
        for key, value in values.items():
            series = self.history.setdefault(key, [])
            del series[epoch:]
            series.extend([None] * (epoch - len(series)))
            series.append(value)
        write_json(os.path.join(self.folder, "progress.json"), self.history)

    def plot(self, name: str = "progress.png") -> None:
        if self.enabled and self.history:
            plot_progress(self.history, os.path.join(self.folder, name))


def progress_bar(iterable=None, disable=False, **kwargs):
    """A tqdm bar that disappears when done; ``disable`` hides it (also when stderr is not a terminal)."""
    from tqdm import tqdm
    return tqdm(iterable, disable=disable or None, leave=False, dynamic_ncols=True, **kwargs)


def plot_progress(history: dict, path: str) -> None:
    """Three panels: losses + pseudo-Dice, learning rate, epoch time."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt

    def series(key):
        values = history.get(key, [])
        xs = [i for i, v in enumerate(values) if v is not None]
        return xs, [values[i] for i in xs]

    fig, axes = plt.subplots(3, 1, figsize=(9, 10))
    ax = axes[0]
    for key, style in (("train_loss", "b-"), ("val_loss", "r-")):
        ax.plot(*series(key), style, label=key)
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    for key, style in (("pseudo_dice", "g:"), ("ema_pseudo_dice", "g-")):
        ax2.plot(*series(key), style, label=key)
    ax2.set_ylabel("pseudo Dice")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="best")
    axes[1].plot(*series("lr"), "k-")
    axes[1].set_ylabel("learning rate")
    axes[2].plot(*series("epoch_time"), "m-")
    axes[2].set_ylabel("epoch time (s)")
    axes[2].set_xlabel("epoch")
    fig.tight_layout()
    try:
        write_via(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    finally:
        plt.close(fig)
