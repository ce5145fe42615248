"""The ResNet's configuration: a frozen dataclass whose input shape comes from the data's metadata."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

# Shape of the embedded default dataset (docs/DESIGN.md, "The embedded default dataset"): 14 bands, 8x8 pixels,
# 7 classes. Only ``ResNetConfig.default()`` (the CLI and benchmarks) uses it; training derives the shape from the
# dataset's metadata through ``ResNetConfig.from_metadata``.
DEFAULT_IN_CHANNELS = 14
DEFAULT_HEIGHT = 8
DEFAULT_WIDTH = 8
DEFAULT_NUM_CLASSES = 7


class PatchShape(Protocol):
    """What ``from_metadata`` reads from a dataset's metadata (``data.format.PatchMetadata`` provides it)."""

    @property
    def num_bands(self) -> int: ...  # noqa: D102

    @property
    def height(self) -> int: ...  # noqa: D102

    @property
    def width(self) -> int: ...  # noqa: D102

    @property
    def num_classes(self) -> int: ...  # noqa: D102


@dataclass(frozen=True)
class ResNetConfig:
    """Input shape, classes and size of the network.

    Attributes:
        in_channels: Spectral bands per patch (C of the input).
        height: Patch height in pixels.
        width: Patch width in pixels.
        num_classes: Number of classes; the head returns this many logits.
        channels: Width of the stem and the first two residual blocks; the third block doubles it.
        dropout: Dropout probability at the end of each residual branch.
        head_dropout: Dropout probability between the head's two linear layers.
        hidden: Width of the head's hidden linear layer.
        upsample_to: If set, resize inputs to this square size (nearest neighbour) before the stem. Reproduces the
            original model's 8x8 to 64x64 upsampling for comparison; it adds no information and costs ~64x compute.
    """

    in_channels: int
    height: int
    width: int
    num_classes: int
    channels: int = 64  # the original model's width; 0.36M parameters at 8x8 (3/4 of them in the head)
    dropout: float = 0.1  # light regularisation inside the blocks; more slows fitting of small datasets
    head_dropout: float = 0.3  # the head holds most parameters (flatten of 2C x H/2 x W/2), so it gets the most
    hidden: int = 128  # head hidden width; a few times the class count is enough, more only adds parameters
    upsample_to: int | None = None  # off: 3x3 stride-1 convolutions already see every pixel of an 8x8 patch

    def __post_init__(self) -> None:
        for name in ("in_channels", "height", "width", "num_classes", "channels", "hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ResNetConfig.{name} must be a positive integer, got {value!r}")
        if self.channels % 2:
            raise ValueError(f"ResNetConfig.channels must be even (the bottleneck halves it), got {self.channels}")
        for name in ("dropout", "head_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"ResNetConfig.{name} must be in [0, 1), got {value!r}")
        if self.upsample_to is not None and (not isinstance(self.upsample_to, int) or self.upsample_to < 1):
            raise ValueError(f"ResNetConfig.upsample_to must be a positive integer or None, got {self.upsample_to!r}")

    @classmethod
    def default(cls, **overrides: Any) -> ResNetConfig:
        """Config for the embedded default dataset's shape (14 bands, 8x8, 7 classes).

        Args:
            **overrides: Field values that replace the defaults (for example ``channels=32``).
        """
        shape = {
            "in_channels": DEFAULT_IN_CHANNELS,
            "height": DEFAULT_HEIGHT,
            "width": DEFAULT_WIDTH,
            "num_classes": DEFAULT_NUM_CLASSES,
        }
        return cls(**{**shape, **overrides})

    @classmethod
    def from_metadata(cls, metadata: PatchShape, **overrides: Any) -> ResNetConfig:
        """Config whose input shape and classes come from a dataset's metadata.

        Args:
            metadata: The dataset's metadata (``data.format.PatchMetadata``).
            **overrides: Values for the size fields (``channels``, ``dropout``, ...).
        """
        shape = {
            "in_channels": metadata.num_bands,
            "height": metadata.height,
            "width": metadata.width,
            "num_classes": metadata.num_classes,
        }
        return cls(**{**shape, **overrides})

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the stem sees: the patch size, or the upsampled size when ``upsample_to`` is set."""
        if self.upsample_to is None:
            return self.height, self.width
        return self.upsample_to, self.upsample_to

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all fields, for checkpoints and Ray configs."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ResNetConfig:
        """Rebuild a config from ``to_dict`` output.

        Raises:
            ValueError: A key is not a field of this config (a typo or a checkpoint from another version).
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ResNetConfig keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**values)
