"""jdrl_ext: fast differentiable ops for reblurring-guided defocus deblurring.

``isotropic_kernels``, ``sv_conv``, ``reblur`` and ``flow_warp`` are custom torch operators
(``torch.ops.jdrl_ext.*``) with C++ and CUDA kernels; ``jdrl_ext.reference`` holds a slow
pure-PyTorch version of each, with the same signatures. SPEC.md is the contract.
"""

from __future__ import annotations

try:
    from jdrl_ext._ops import flow_warp, isotropic_kernels, reblur, sv_conv
except ImportError as error:  # the compiled library is missing: say how to build it
    if "_C" not in str(error):
        raise
    import importlib.metadata as _metadata
    import os as _os

    _here = _os.path.dirname(_os.path.abspath(__file__))
    try:
        _installed = _metadata.distribution("jdrl_ext").locate_file("jdrl_ext")
    except _metadata.PackageNotFoundError:
        _installed = None
    if _installed is not None and _os.path.abspath(str(_installed)) != _here:
        # `python -m pytest` (or python) started in the repository root: its source folder comes
        # first on sys.path and hides the installed build.
        raise ImportError(
            f"imported jdrl_ext from the source folder {_here}, which has no compiled _C and hides the installed "
            "jdrl_ext: run from another folder, use `pytest tests` instead of `python -m pytest tests`, or build "
            "in place with `python setup.py build_ext --inplace`."
        ) from error
    raise ImportError(
        "jdrl_ext's compiled operators (jdrl_ext._C) are not built. Install with "
        "`pip install --no-build-isolation .` or build in place with `python setup.py build_ext --inplace`."
    ) from error
from jdrl_ext._layout import level_slice, seed_channels

__all__ = ["isotropic_kernels", "sv_conv", "reblur", "flow_warp", "seed_channels", "level_slice"]
__version__ = "0.1.0"
