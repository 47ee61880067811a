"""Model zoo: the registry :data:`MODELS` of model families, one module each.

A model family is a :class:`~trainables.families.ModelConfig` subclass with a ``name`` literal,
its parameters as fields and ``build(spec) -> nn.Module``, registered with ``@MODELS.register``
(see ``mlp.py``). ``build_model(cfg, spec)`` builds the configured one.

Every model is generic in ``spec.input_shape`` and ``spec.num_classes`` and uses PyTorch's
default initialisation. A model is a plain ``nn.Module``: which channels physical compaction
(:mod:`trainables.compact`) can remove is found by tracing it, never declared. The built-ins also
set ``input_shape`` (the shape of one example they were built for).

Models (all ``nn.Sequential`` subclasses with named children, except ResNet-20):

- ``mlp`` (``mlp.py``): Flatten -> [Linear -> ReLU -> (BatchNorm1d)] per hidden width -> (Dropout)
  -> Linear.
  GrOWL's MNIST net (784-300-10, BN after the ReLU) is ``hidden=[300], batch_norm=True``.
- ``lenet_cges`` (``lenet_cges.py``): the official CGES MNIST net, conv5x5x32 (SAME) -> pool ->
  conv5x5x64 -> pool -> fc1024 -> dropout -> fc (names ``conv1, conv2, fc3, fc4`` as in the CGES
  tables).
- ``vgg16_cifar`` (``vgg16_cifar.py``): the Zagoruyko VGG-16 (conv3x3+BN+ReLU, fc1 -> BN -> (no
  ReLU) -> fc2) used by GrOWL. Inputs smaller than 32x32 are accepted: a max-pool that would take
  the spatial size below 1 is left out (so 8x8 digits go 8 -> 4 -> 2 -> 1 and skip the last two
  pools).
- ``resnet20`` (``resnet20.py``): He et al.'s CIFAR ResNet-20 with option-A (parameter-free) shortcuts.

Model sources (``sources.py`` holds what they share: data arguments, imports, trained weights):

- ``python`` (``python_factory.py``): your own ``module:attribute`` factory;
- ``torchvision`` (``torchvision_models.py``): ``torchvision.models.get_model(arch)``;
- ``timm`` (``timm_models.py``): ``timm.create_model(arch)`` (optional extra).

Every family may start from trained weights: ``model.weights`` (a state-dict file, its
``model.weights_sha256`` checked when given), which ``build_model`` loads after building through
``ModelConfig.load_weights`` (``sources.load_weights_file``; the sources also resolve named weights).
"""

from __future__ import annotations

from ..families import MODELS, ModelConfig
from .base import build_model, prunable_layers

# registration, in the order the families are listed (docs, "valid" lists)
from .mlp import MLP, MLPConfig  # isort: skip
from .lenet_cges import LeNetCGES, LeNetCGESConfig  # isort: skip
from .vgg16_cifar import VGG16, VGG16_CFG, VGG16Config  # isort: skip
from .resnet20 import BasicBlock, ResNet20, ResNet20Config  # isort: skip
# model sources: your own network, torchvision's and timm's
from .python_factory import PythonModelConfig  # isort: skip
from .torchvision_models import TorchvisionConfig  # isort: skip
from .timm_models import TimmConfig  # isort: skip

register = MODELS.register  # class decorator for a ModelConfig subclass

__all__ = [
    "MODELS",
    "ModelConfig",
    "register",
    "build_model",
    "prunable_layers",
    "MLP",
    "MLPConfig",
    "LeNetCGES",
    "LeNetCGESConfig",
    "VGG16",
    "VGG16Config",
    "ResNet20",
    "ResNet20Config",
    "BasicBlock",
    "VGG16_CFG",
    "PythonModelConfig",
    "TorchvisionConfig",
    "TimmConfig",
]
