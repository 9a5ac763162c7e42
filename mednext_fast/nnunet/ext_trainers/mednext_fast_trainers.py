"""The mednext-fast trainers, as nnU-Net's ``nnUNet_extTrainer`` search imports them (see __init__.py)."""
from mednext_fast.nnunet.trainer import *  # noqa: F401,F403  (nnU-Net finds the classes by name here)
from mednext_fast.nnunet.trainer import __all__  # noqa: F401
