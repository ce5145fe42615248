"""The model package: the ResNet config, the network, and the preflight check run before training."""

from typing import Any

from resnet.config import ResNetConfig
from resnet.model import ResNet, unwrap

__all__ = ["PreflightError", "ResNet", "ResNetConfig", "check", "unwrap"]


def __getattr__(name: str) -> Any:
    # ``check`` and ``PreflightError`` load resnet.preflight lazily, so ``python -m resnet.preflight`` does not find
    # the module already imported (runpy warns about that).
    if name in ("check", "PreflightError"):
        from resnet import preflight

        return getattr(preflight, name)
    raise AttributeError(f"module 'resnet' has no attribute {name!r}")
