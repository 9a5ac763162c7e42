"""Make kernels/ and train/ importable as mednext_fast.kernels / mednext_fast.train in a source checkout.

An installed wheel maps them through setup.py's package_dir; when running from the source tree
(``PYTHONPATH=.``, or an editable install) the repo root is added to the package's search path instead.
"""
import os


def extend_package_path(package_path: list) -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(root, "setup.py")) and os.path.isfile(
            os.path.join(root, "kernels", "__init__.py")) and root not in package_path:
        package_path.append(root)
