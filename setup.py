"""Build and install mednext-fast.

The repo keeps one idea per top-level folder (kernels/, train/, csrc/); installed, the Python ones live
under the ``mednext_fast`` namespace (``mednext_fast.kernels``, ``mednext_fast.train``) so no generic
top-level name lands in site-packages. Build with ``pip install --no-build-isolation -e .`` so the
extension compiles against the torch already installed (an isolated build would fetch another torch).
"""
from setuptools import find_packages, setup

PACKAGE_DIRS = {"mednext_fast.kernels": "kernels", "mednext_fast.train": "train"}


def packages():
    found = find_packages(include=["mednext_fast", "mednext_fast.*"])
    for name, folder in PACKAGE_DIRS.items():
        found.append(name)
        found += [f"{name}.{sub}" for sub in find_packages(where=folder)]
    return found


setup(
    name="mednext-fast",
    version="0.1.0",
    description="Fast, drop-in MedNeXt (3D ConvNeXt segmentation) for PyTorch with fused kernels",
    python_requires=">=3.10",
    packages=packages(),
    package_dir=PACKAGE_DIRS,
    install_requires=["torch>=2.4", "numpy>=1.24"],
    extras_require={
        "test": ["pytest", "monai==1.6.1"],
        "triton": ["triton>=3.6"],
    },
)
