"""``python -m mednext_fast.nnunet COMMAND``: MedNeXt for nnU-Net v2 (guide: docs/nnunet.md).

    env       print the nnUNet_extTrainer export that makes nnUNetv2_train / nnUNetv2_predict find our trainers
              (eval "$(python -m mednext_fast.nnunet env)")
    plans     add a MedNeXt configuration (patch divisible by 16; paper: 1 mm, 128^3, batch 2) to the plans
    train     nnUNetv2_train with our trainers looked up first and UpKern for -pretrained_weights
    predict   nnUNetv2_predict with our trainers looked up first
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from mednext_fast.nnunet import ext_trainer_value


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("train", "predict"):  # every other argument is nnU-Net's own
        from mednext_fast.nnunet.launcher import run

        return run(argv[0], argv[1:])
    from mednext_fast.nnunet import plans

    parser = argparse.ArgumentParser(prog="python -m mednext_fast.nnunet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("env", help="print the nnUNet_extTrainer export line")
    plans.build_parser(commands.add_parser("plans", help="add a MedNeXt configuration to nnU-Net plans"))
    commands.add_parser("train", help="nnUNetv2_train with our trainers (arguments as nnUNetv2_train's)")
    commands.add_parser("predict", help="nnUNetv2_predict with our trainers (arguments as nnUNetv2_predict's)")
    args = parser.parse_args(argv)
    if args.command == "env":
        print(f"export nnUNet_extTrainer={shlex.quote(ext_trainer_value(os.environ.get('nnUNet_extTrainer')))}")
        return 0
    if args.command == "plans":
        return plans.main(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
