"""A short-run MedNeXt trainer for the nnU-Net end-to-end test, found through nnUNet_extTrainer.

Its name keeps the nnUNetTrainerMedNeXt_S_k3 prefix, so mednext_fast.nnunet.load_model knows the architecture.
"""
from mednext_fast.nnunet.trainer import nnUNetTrainerMedNeXt_S_k3


class nnUNetTrainerMedNeXt_S_k3_Test(nnUNetTrainerMedNeXt_S_k3):
    """MedNeXt-S k3 with the recipe unchanged, for 2 epochs of 3 iterations (2 validation batches)."""

    def __init__(self, plans, configuration, fold, dataset_json, device=None):
        import torch

        super().__init__(plans, configuration, fold, dataset_json, device or torch.device("cpu"))
        self.num_epochs = 2
        self.num_iterations_per_epoch = 3
        self.num_val_iterations_per_epoch = 2
