"""Model zoo and data sets of the papers' experiments.

- :mod:`torchmoo.zoo.models`: multi-head LeNets, MLPs, Conv-4 with self-supervised heads, a cosine
  classifier, ResNet-18 and wide ResNets, parameter counts checked against the papers.
- :mod:`torchmoo.zoo.data`: MultiDigits (embedded), MultiMNIST and its variants from IDX files,
  Census-Income and SARCOS from CSV files, sinusoid few-shot regression and N-way K-shot episodes.
"""

from torchmoo.zoo import data, models

__all__ = ["data", "models"]
