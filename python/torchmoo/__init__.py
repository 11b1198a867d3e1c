"""torchmoo: gradient-based multi-objective optimization for PyTorch.

The compiled operators live in ``torch.ops.torchmoo``; :mod:`torchmoo.ops` wraps them with argument
checks and docstrings.
"""

import torch  # noqa: F401  (loads libtorch before the extension, which links against it)

from torchmoo import _C  # noqa: F401  (registers torch.ops.torchmoo.*)
from torchmoo import ops

__version__ = "0.1.0"
cuda_built: bool = bool(_C.cuda_built)

__all__ = ["ops", "cuda_built", "__version__"]
