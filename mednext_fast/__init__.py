"""mednext-fast: a fast, drop-in MedNeXt for PyTorch."""
from ._source_tree import extend_package_path

extend_package_path(__path__)
