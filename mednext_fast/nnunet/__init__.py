"""MedNeXt inside nnU-Net v2: trainers, a plans command, UpKern and weights both ways (extra ``[nnunet]``).

* ``trainer.py``   the nnU-Net v2 trainers ``nnUNetTrainerMedNeXt_{S,B,M,L}_k{3,5,7}`` (and the generic
                   ``nnUNetTrainerMedNeXt``, whose architecture comes from the plans)
* ``network.py``   the MedNeXt a trainer builds, its deep-supervision switch and the patch checks
* ``plans.py``     ``python -m mednext_fast.nnunet plans``: add a MedNeXt configuration to a plans file
* ``upkern.py``    start a larger-kernel run from a smaller-kernel nnU-Net checkpoint
* ``weights.py``   an nnU-Net checkpoint of our trainers as a ``mednext_fast.MedNeXt``
* ``export.py``    a ``train/run.py`` run as an nnU-Net results folder
* ``launcher.py``  ``train`` / ``predict``: nnU-Net's own entry points with our trainers looked up first
* ``benchmark.py`` nnU-Net epoch time with our trainer on the fused path vs the PyTorch reference path
* ``ext_trainers/`` the folder to put in ``nnUNet_extTrainer`` (``python -m mednext_fast.nnunet env``)

Only ``trainer``, ``launcher`` and ``benchmark`` import nnunetv2; without it they raise ImportError naming
``pip install mednext-fast[nnunet]``. The rest reads plans and checkpoints as plain files.
"""
from __future__ import annotations

import importlib.util
import os

# The folder nnU-Net searches for trainer modules (nnUNet_extTrainer). It holds one module that
# re-exports our trainers, so nnU-Net's import of it gives the very classes of mednext_fast.nnunet.trainer.
EXT_TRAINER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ext_trainers")
INSTALL_HINT = "pip install mednext-fast[nnunet]  (from a checkout: pip install --no-build-isolation -e '.[nnunet]')"
SUPPORTED = "2.8"  # the nnunetv2 release line this integration is tested with (2.8.1 on PyPI)


def require_nnunetv2():
    """Import and return nnunetv2, or raise ImportError naming the extra that installs it."""
    if importlib.util.find_spec("nnunetv2") is None:
        raise ImportError(f"mednext_fast.nnunet needs nnU-Net v2 (nnunetv2 >= {SUPPORTED}), which is not installed. "
                          f"Install it with: {INSTALL_HINT}")
    import nnunetv2

    return nnunetv2


def ext_trainer_value(current: str | None = None) -> str:
    """The nnUNet_extTrainer value that adds our folder to ``current`` (the variable's present value)."""
    parts = [p for p in (current or "").split(os.pathsep) if p]
    if EXT_TRAINER_DIR not in parts:
        parts.append(EXT_TRAINER_DIR)
    return os.pathsep.join(parts)
