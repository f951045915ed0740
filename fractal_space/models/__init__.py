"""timm model families: FractalNet and the CIFAR baselines it is compared against.

Importing this package registers every family with timm's model registry.
"""

from fractal_space.models import densenet_cifar, fractalnet, resnet_cifar  # noqa: F401
