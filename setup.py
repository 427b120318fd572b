"""Package discovery for setuptools; the project's metadata is in pyproject.toml.

Every package under seqwin/ is found by directory discovery, so a new subpackage cannot be left out of the wheel.
The Triton kernels live in the repo's top-level kernels/ folder but install as ``seqwin.kernels``, never as a
generic top-level ``kernels`` package; discovery cannot rename a folder, so that one mapping is spelled out.
"""

from setuptools import find_packages, setup

KERNELS = "seqwin.kernels"

setup(
    packages=[
        *find_packages(include=["seqwin", "seqwin.*"]),
        KERNELS,
        *(f"{KERNELS}.{name}" for name in find_packages("kernels")),
    ],
    package_dir={KERNELS: "kernels"},
)
