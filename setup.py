"""Builds the jdrl_ext C++ (and, where possible, CUDA) extension and installs jdrl_ext and jdrl.

A CppExtension is built where torch has no CUDA; a CUDAExtension where torch has CUDA and nvcc is
found, or wherever FORCE_CUDA=1 (a build host without a GPU). TORCH_CUDA_ARCH_LIST is respected by
torch's build helpers. Install with `pip install --no-build-isolation .` so that the torch already
installed is the one compiled against. The project's metadata (name, version, dependencies, the
`jdrl` script) is in pyproject.toml; this file only describes the packages and the extension.
"""

from __future__ import annotations

import glob
import os

from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def cuda_wanted() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    import torch

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def extension():
    cpu_sources = sorted(glob.glob(os.path.join("csrc", "*", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "*", "*.cu")))
    # -fno-trapping-math: we never read floating-point exception flags, and without it GCC will not
    # turn the comparisons in the per-pixel loops (running maxima, the exp clamp) into vector selects.
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-fno-trapping-math"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    link_args = ["-fopenmp"]
    if cuda_wanted():
        nvcc_flags = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
        # Extra CUDA headers (pip's nvidia-* wheels) when the toolkit lacks some of them.
        include_dirs += os.environ.get("JDRL_EXTRA_INCLUDES", "").split(os.pathsep) if os.environ.get("JDRL_EXTRA_INCLUDES") else []
        return cpp_extension.CUDAExtension(
            "jdrl_ext._C",
            cpu_sources + cuda_sources,
            include_dirs=include_dirs,
            define_macros=[("JDRL_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=link_args,
        )
    return cpp_extension.CppExtension(
        "jdrl_ext._C",
        cpu_sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_args,
    )


setup(
    packages=find_packages(include=["jdrl_ext", "jdrl_ext.*"]) + find_packages("python"),
    package_dir={"jdrl": "python/jdrl"},
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
