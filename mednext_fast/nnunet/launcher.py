"""``python -m mednext_fast.nnunet train|predict ...``: nnU-Net's own nnUNetv2_train / nnUNetv2_predict, with

* ``nnUNet_extTrainer`` set to include our trainers (no export needed);
* trainers looked up in our module and the nnUNet_extTrainer folders *before* nnU-Net's own package. nnU-Net
  first imports every module of its trainer package while it searches, so one trainer module whose
  dependencies do not import (e.g. its Primus trainers need timm, hence a torchvision built for the
  installed torch) stops every external trainer; the launcher does not depend on them;
* ``-pretrained_weights`` of a MedNeXt run going through UpKern (kernels resized, heads with another
  class count left as initialised); nnU-Net's loader requires equal shapes.

Every argument is passed to nnU-Net unchanged (``train --help`` prints nnU-Net's). Multi-GPU training
(``-num_gpus``) starts processes that use nnU-Net's own lookup, which finds our trainers through
nnUNet_extTrainer when nnU-Net's package imports.
"""
from __future__ import annotations

import os
import sys

from mednext_fast.nnunet import ext_trainer_value, require_nnunetv2

PROGRAMS = {"train": "nnUNetv2_train", "predict": "nnUNetv2_predict"}


def find_trainer(name: str):
    """The trainer class ``name``: ours, then the nnUNet_extTrainer folders, then nnU-Net's own search."""
    from nnunetv2.utilities import find_objects
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    from mednext_fast.nnunet import trainer as ours

    if name in ours.__all__:
        return getattr(ours, name)
    for path in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep):
        if path.strip() and os.path.isdir(path):
            # The same call nnU-Net makes for these folders, only earlier.
            found = recursive_find_python_class(path, name, None, base_folder=path,
                                                cleanup_imports_from_base_folder=True)
            if found is not None:
                return found
    return find_objects.recursive_find_trainer_class_by_name(name)


def load_pretrained_weights(network, fname, verbose=False):
    """nnU-Net's -pretrained_weights hook: UpKern for our MedNeXt, nnU-Net's loader for anything else."""
    from nnunetv2.run import load_pretrained_weights as nnunet_loader

    from mednext_fast.nnunet.network import unwrap
    from mednext_fast.nnunet.upkern import load_pretrained

    try:
        unwrap(network)
    except TypeError:
        return nnunet_loader.load_pretrained_weights(network, fname, verbose=verbose)
    load_pretrained(network, fname)


def install_hooks() -> None:
    """Point nnU-Net's training and prediction entry points at ``find_trainer`` and our pretrained loader."""
    require_nnunetv2()
    from nnunetv2.inference import predict_from_raw_data
    from nnunetv2.run import run_training

    os.environ["nnUNet_extTrainer"] = ext_trainer_value(os.environ.get("nnUNet_extTrainer"))
    run_training.recursive_find_trainer_class_by_name = find_trainer
    predict_from_raw_data.recursive_find_trainer_class_by_name = find_trainer
    run_training.load_pretrained_weights = load_pretrained_weights


def run(command: str, argv: list) -> int:
    """Run nnU-Net's ``command`` ('train' or 'predict') entry point with ``argv`` and our hooks."""
    install_hooks()
    from nnunetv2.inference.predict_from_raw_data import predict_entry_point
    from nnunetv2.run.run_training import run_training_entry

    entry = {"train": run_training_entry, "predict": predict_entry_point}[command]
    saved = sys.argv
    sys.argv = [PROGRAMS[command]] + list(argv)
    try:
        entry()
    finally:
        sys.argv = saved
    return 0
