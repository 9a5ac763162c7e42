"""Build and install mednext-fast.

The repo keeps one idea per top-level folder (kernels/, train/, csrc/); installed, the Python ones live
under the ``mednext_fast`` namespace (``mednext_fast.kernels``, ``mednext_fast.train``) so no generic
top-level name lands in site-packages. Build with ``pip install --no-build-isolation -e .`` so the
extension compiles against the torch already installed (an isolated build would fetch another torch).
A source checkout runs through that editable install, which maps the folders to their package names
(nothing is added to sys.path); ``MEDNEXT_FAST_NO_EXT=1`` skips the C++ build (e.g. on a GPU machine).

The C++ extension ``mednext_fast._C`` (csrc/, the 'cpp' backend) is optional: if torch is missing, the
compiler fails, or ``MEDNEXT_FAST_NO_EXT=1`` is set, the install still succeeds without it and prints a
warning; ``mednext_fast.backends.cpp.available()`` then says how to build it.
"""
import os
import sys

from setuptools import find_packages, setup

PACKAGE_DIRS = {"mednext_fast.kernels": "kernels", "mednext_fast.train": "train"}
EXT_SOURCES = ["csrc/bind.cpp", "csrc/ops.cpp", "csrc/dispatch.cpp", "csrc/kernels_avx512.cpp",
               "csrc/kernels_avx2.cpp", "csrc/kernels_default.cpp"]


def packages():
    found = find_packages(include=["mednext_fast", "mednext_fast.*"])
    for name, folder in PACKAGE_DIRS.items():
        found.append(name)
        found += [f"{name}.{sub}" for sub in find_packages(where=folder)]
    return found


def _warn(msg):
    bar = "=" * 78
    print(f"\n{bar}\nWARNING (mednext-fast): {msg}\nThe package installs without the C++ 'cpp' backend. "
          f"Rebuild it with `pip install --no-build-isolation -e .`\n{bar}\n", file=sys.stderr, flush=True)


# pip hides a successful build's output, so a failed extension build is also recorded here and
# reported by mednext_fast.backends.cpp.available().
FAILURE_NOTE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mednext_fast", "_C_build_error.txt")


def _record_failure(message):
    try:
        if message is None:
            if os.path.exists(FAILURE_NOTE):
                os.remove(FAILURE_NOTE)
        else:
            with open(FAILURE_NOTE, "w") as f:
                f.write(message.strip()[-2000:] + "\n")
    except OSError:
        pass


def extension_kwargs():
    """ext_modules/cmdclass for the C++ extension, or {} when it cannot be attempted."""
    if os.environ.get("MEDNEXT_FAST_NO_EXT") == "1":
        _warn("MEDNEXT_FAST_NO_EXT=1: not building the C++ extension.")
        return {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except Exception as err:  # torch missing (e.g. an isolated build): still install the Python package
        _warn(f"torch is not importable here ({err}); not building the C++ extension.")
        return {}

    class OptionalBuildExtension(BuildExtension):
        """Builds with ninja; a failed build (no compiler, no OpenMP, compile error) only warns."""

        def run(self):
            try:
                super().run()
            except Exception as err:  # noqa: BLE001 - any build failure must leave an installable package
                _warn(f"building the C++ extension failed: {err}")
                self.extensions = []  # nothing to copy into the (editable) wheel
                _record_failure(f"{type(err).__name__}: {err}")
            else:
                _record_failure(None)

        def get_outputs(self):
            return [p for p in super().get_outputs() if os.path.exists(p)]

    # No -march: the kernels pick AVX-512/AVX2/baseline builds at run time (csrc/dispatch.cpp), so the
    # binary runs on any x86-64 CPU. -fopenmp makes at::parallel_for run on torch's OpenMP threads.
    ext = CppExtension(
        name="mednext_fast._C",
        sources=EXT_SOURCES,
        include_dirs=[os.path.abspath("csrc")],
        extra_compile_args=["-O3", "-fopenmp", "-Wall"],
        extra_link_args=["-fopenmp"],
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}}


setup(
    name="mednext-fast",
    version="0.1.0",
    description="Fast, drop-in MedNeXt (3D ConvNeXt segmentation) for PyTorch with fused kernels",
    python_requires=">=3.10",
    packages=packages(),
    package_dir=PACKAGE_DIRS,
    package_data={"mednext_fast.kernels": ["tuned/*.json"]},  # per-GPU launch configurations
    install_requires=["torch>=2.4", "numpy>=1.24"],
    extras_require={
        "test": ["pytest", "monai==1.6.1"],
        # Compiled GPU path: 3.6 (torch 2.11's) and later; the interpreter suite is tested on 3.7 and 3.9.
        "triton": ["triton>=3.6,<3.10"],
        "train": ["nibabel", "scipy", "tqdm", "matplotlib"],
        "bench": ["onnx==1.23.2", "onnxruntime==1.32.0", "openvino==2026.4.1"],
        # nnU-Net v2 trainers (mednext_fast.nnunet); tested with 2.8.1. Install with the installed torch pinned
        # in the same command (docs/nnunet.md): nnU-Net's dependencies (timm -> torchvision) may upgrade it.
        "nnunet": ["nnunetv2>=2.8.1,<2.9"],
    },
    entry_points={"console_scripts": ["mednext-train = mednext_fast.train.run:main",
                                      "mednext-predict = mednext_fast.train.predict:main",
                                      "mednext-prepare = mednext_fast.train.prepare:main",
                                      "mednext-nnunet = mednext_fast.nnunet.__main__:main"]},
    **extension_kwargs(),
)
