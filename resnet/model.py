"""A small ResNet for multispectral patches: stem, three bottleneck residual blocks and a head returning logits."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from resnet.config import ResNetConfig


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 (output size ceil(input / stride))."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class Bottleneck(nn.Module):
    """Residual block: 1x1 down to half the output width, 3x3 (carrying the stride), 1x1 up, then dropout.

    A projection shortcut (1x1 convolution + BatchNorm, with the block's stride) is built here, in ``__init__``,
    whenever the block changes the resolution or the channel count; otherwise the shortcut is the identity.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        width = out_planes // 2
        self.conv1 = conv1x1(in_planes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: Feature maps, shape (N, in_planes, H, W).

        Returns:
            Feature maps, shape (N, out_planes, ceil(H / stride), ceil(W / stride)).
        """
        identity = x  # (N, Cin, H, W)

        out = self.relu(self.bn1(self.conv1(x)))  # (N, Cout/2, H, W)
        out = self.relu(self.bn2(self.conv2(out)))  # (N, Cout/2, H', W')
        out = self.bn3(self.conv3(out))  # (N, Cout, H', W')
        # Dropout on the branch only, so the identity path (and its gradient) is never dropped.
        out = self.dropout(out)

        if self.downsample is not None:
            identity = self.downsample(x)  # (N, Cout, H', W')

        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """Stem, two bottleneck blocks at full resolution, one that halves it and doubles the width, and a linear head.

    The output is raw logits, shape (N, num_classes), for ``nn.CrossEntropyLoss`` (which applies log-softmax
    itself; feeding it probabilities flattens the gradients).

    Args:
        config: Input shape, classes and network size.
    """

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        # Off by default; the original model's upsampling, kept only to measure what it costs.
        self.upsample = nn.Upsample(size=config.input_size, mode="nearest") if config.upsample_to else nn.Identity()
        self.stem = nn.Sequential(conv3x3(config.in_channels, c), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.layer1 = Bottleneck(c, c, dropout=config.dropout)
        self.layer2 = Bottleneck(c, c, dropout=config.dropout)
        self.layer3 = Bottleneck(c, 2 * c, stride=2, dropout=config.dropout)
        height, width = config.input_size
        features = 2 * c * math.ceil(height / 2) * math.ceil(width / 2)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(features, config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.head_dropout),
            nn.Linear(config.hidden, config.num_classes),
        )

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        # Zero the last BN of each residual branch, so every block starts as the identity; this eases early
        # training ("Accurate, Large Minibatch SGD", Goyal et al., arXiv 1706.02677). The projection shortcut's BN
        # is not on the branch and keeps weight 1.
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of patches.

        Args:
            x: Normalised patches, shape (N, in_channels, height, width).

        Returns:
            Logits, shape (N, num_classes).
        """
        x = self.upsample(x)  # (N, Cin, H, W); (N, Cin, S, S) when upsample_to=S
        x = self.stem(x)  # (N, C, H, W)
        x = self.layer1(x)  # (N, C, H, W)
        x = self.layer2(x)  # (N, C, H, W)
        x = self.layer3(x)  # (N, 2C, ceil(H/2), ceil(W/2))
        return self.head(x)  # (N, num_classes)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DDP / DataParallel / ``torch.compile`` wrappers (the one whose weights are saved)."""
    while isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    return getattr(model, "_orig_mod", model)
