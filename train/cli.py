"""What the command-line entry points (``run.py``, ``predict.py``) share: the help layout and the exit on
bad input data."""
from __future__ import annotations

import argparse
import sys

from mednext_fast.train.dataset_io import DatasetError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' only for options that have a real default."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def exit_code(command, args) -> int:
    """``command(args)``; bad input data ends with its message (which names the case and file) and code 2."""
    try:
        return command(args)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
