"""torchmoo: gradient-based multi-objective optimization for PyTorch.

The compiled operators live in ``torch.ops.torchmoo``; :mod:`torchmoo.ops` wraps them with argument
checks and docstrings.
"""

import torch  # noqa: F401  (loads libtorch before the extension, which links against it)

from torchmoo import _C  # noqa: F401  (registers torch.ops.torchmoo.*)
from torchmoo import ops
from torchmoo import metrics, problems
from torchmoo import zoo
from torchmoo import autograd, methods
from torchmoo.training import backward

__version__ = "0.1.0"
cuda_built: bool = bool(_C.cuda_built)

from torchmoo import experiments  # noqa: E402  (last: experiment modules use the whole package)

__all__ = ["ops", "metrics", "problems", "zoo", "autograd", "methods", "backward", "experiments", "cuda_built", "__version__"]
