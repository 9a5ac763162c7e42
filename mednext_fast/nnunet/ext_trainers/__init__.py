"""Put this folder in nnU-Net's ``nnUNet_extTrainer`` (``python -m mednext_fast.nnunet env`` prints the line).

nnU-Net imports every module here as a top-level module while it looks for a trainer by name; the one
module re-exports the classes of ``mednext_fast.nnunet.trainer``, so both names denote the same classes.
"""
