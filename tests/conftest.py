import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_mednext(**overrides):
    """The smallest MedNeXt that still has every block type: 4 channels, one block per stage."""
    from mednext_fast import MedNeXt
    config = dict(in_channels=1, n_channels=4, n_classes=3, exp_r=2, kernel_size=3, do_res=True,
                  do_res_up_down=True, block_counts=[1] * 9)
    config.update(overrides)
    return MedNeXt(**config)
