"""Networks of the papers' experiments, with their parameter counts checked against the papers.

Multi-task networks derive from :class:`MultiTaskModel`: ``forward`` returns one output per task and
``shared_parameters()`` / ``task_parameters(i)`` split the parameters for the multi-objective methods.
"""

from torchmoo.zoo.models.base import MultiTaskModel, count_parameters
from torchmoo.zoo.models.conv4 import Conv4, Conv4SelfSupervised, RelativePatchLocationHead, RotationHead
from torchmoo.zoo.models.cosine import CosineClassifier
from torchmoo.zoo.models.lenet import MultiLeNet, MultiLeNetSubset
from torchmoo.zoo.models.mlp import CensusMLP, MultiHeadMLP, SarcosMLP, SinusoidMLP, mlp
from torchmoo.zoo.models.resnet import MultiHeadResNet18, ResNet18
from torchmoo.zoo.models.wrn import WideResNet, wrn28_10

__all__ = [
    "MultiTaskModel",
    "count_parameters",
    "MultiLeNet",
    "MultiLeNetSubset",
    "mlp",
    "MultiHeadMLP",
    "CensusMLP",
    "SarcosMLP",
    "SinusoidMLP",
    "Conv4",
    "RotationHead",
    "RelativePatchLocationHead",
    "Conv4SelfSupervised",
    "CosineClassifier",
    "ResNet18",
    "MultiHeadResNet18",
    "WideResNet",
    "wrn28_10",
]
