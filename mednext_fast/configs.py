"""The paper's MedNeXt variants S/B/M/L (official create_mednext_v1 configs)."""
from __future__ import annotations

from .model import MedNeXt

VARIANTS = {
    "S": dict(exp_r=2, block_counts=[2] * 9, checkpoint_style=None),
    "B": dict(exp_r=[2, 3, 4, 4, 4, 4, 4, 3, 2], block_counts=[2] * 9, checkpoint_style=None),
    "M": dict(exp_r=[2, 3, 4, 4, 4, 4, 4, 3, 2], block_counts=[3, 4, 4, 4, 4, 4, 4, 4, 3],
              checkpoint_style="outside_block"),
    "L": dict(exp_r=[3, 4, 8, 8, 8, 8, 8, 4, 3], block_counts=[3, 4, 8, 8, 8, 8, 8, 4, 3],
              checkpoint_style="outside_block"),
}
KERNEL_SIZES = (3, 5, 7)


def variant_config(variant: str, kernel_size: int = 3) -> dict:
    """MedNeXt keyword arguments of a paper variant (n_channels 32, residuals on, GroupNorm, 3-D)."""
    key = variant.upper()
    if key not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    if kernel_size not in KERNEL_SIZES:
        raise ValueError(f"kernel_size must be one of {KERNEL_SIZES} (the paper's variants), got {kernel_size!r}; "
                         "other odd sizes: build MedNeXt(...) directly (above 7 they run on PyTorch only)")
    return dict(n_channels=32, kernel_size=kernel_size, do_res=True, do_res_up_down=True,
                norm_type="group", dim="3d", grn=False, **VARIANTS[key])


def create_mednext(variant: str, in_channels: int, n_classes: int, kernel_size: int = 3,
                   deep_supervision: bool = False, **overrides) -> MedNeXt:
    """A paper MedNeXt: ``variant`` in S/B/M/L, ``kernel_size`` 3, 5 or 7 (M and L checkpoint by default).

    ``overrides`` replace any MedNeXt argument, e.g. ``checkpoint_style=None``, ``backend='triton'``
    or ``monai_compat=True`` (MONAI's down-block shapes, to load MONAI B/M/L weights).
    """
    config = variant_config(variant, kernel_size)
    config.update(overrides)
    return MedNeXt(in_channels=in_channels, n_classes=n_classes, deep_supervision=deep_supervision, **config)
