"""mednext-fast: a fast, drop-in MedNeXt for PyTorch.

>>> import mednext_fast as mf
>>> model = mf.create_mednext("B", in_channels=1, n_classes=3, kernel_size=5)
>>> mf.upkern(model, "b_k3.pt")            # UpKern from a trained kernel-3 checkpoint
>>> mf.set_backend(model, "torch")         # or 'auto' / 'triton' / 'cpp'
"""
from ._source_tree import extend_package_path

extend_package_path(__path__)

from .accelerate import accelerate  # noqa: E402
from .backends import BACKENDS, BackendUnavailable  # noqa: E402
from .blocks import MedNeXtBlock, MedNeXtDownBlock, MedNeXtUpBlock, OutBlock  # noqa: E402
from .checkpoint_io import load_state_dict_file, save_atomic  # noqa: E402
from .configs import VARIANTS, create_mednext  # noqa: E402
from .convert import convert_state_dict  # noqa: E402
from .model import MedNeXt  # noqa: E402
from .upkern import upkern  # noqa: E402


def set_backend(model: MedNeXt, name: str) -> MedNeXt:
    """Switch every block of ``model`` to backend ``name`` ('auto', 'torch', 'triton' or 'cpp')."""
    return model.set_backend(name)


__all__ = ["accelerate", "BACKENDS", "BackendUnavailable", "MedNeXt", "MedNeXtBlock", "MedNeXtDownBlock", "MedNeXtUpBlock",
           "OutBlock", "VARIANTS", "convert_state_dict", "create_mednext", "load_state_dict_file",
           "save_atomic", "set_backend", "upkern"]
