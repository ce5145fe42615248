"""A faithful reproduction of the user's original model, bugs included, for tests that must reject it.

Its bugs, each marked ``# BUG`` below: the 8x8 input is upsampled to 64x64; one block's weights are used twice;
the downsampling block builds its 1x1 projection shortcut (an ``nn.Conv2d``) inside ``forward``, so it is never
registered, never trained and has fresh random weights on every call; activations are kept on ``self``; and the
head ends in softmax probabilities, which the user then fed to ``CrossEntropyLoss``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, mid, kernel_size=1)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_channels, kernel_size=1)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.out = F.relu(self.bn1(self.conv1(x)))  # BUG: activation kept on self
        self.out = F.relu(self.bn2(self.conv2(self.out)))
        self.out = self.dropout(self.bn3(self.conv3(self.out)))
        if self.stride != 1 or self.in_channels != self.out_channels:
            # BUG: a new, unregistered Conv2d with fresh random weights on every call.
            shortcut = nn.Conv2d(self.in_channels, self.out_channels, kernel_size=1, stride=self.stride).to(x.device)
            x = shortcut(x)
        return F.relu(self.out + x)


class SeedResNet(nn.Module):
    def __init__(self, in_channels: int = 14, num_classes: int = 7, channels: int = 64, size: int = 64) -> None:
        super().__init__()
        self.size = size
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.block = ConvBlock(channels, channels)
        self.block3 = ConvBlock(channels, 2 * channels, stride=2)
        self.fc1 = nn.Linear(2 * channels * (size // 2) ** 2, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(self.size, self.size), mode="nearest")  # BUG: 8x8 -> 64x64 adds nothing
        self.x1 = F.relu(self.bn1(self.conv1(x)))  # BUG: activations kept on self
        self.x2 = self.block(self.x1)
        self.x3 = self.block(self.x2)  # BUG: the same block's weights used a second time
        self.x4 = self.block3(self.x3)
        out = F.dropout(F.relu(self.fc1(torch.flatten(self.x4, 1))), 0.3, training=self.training)
        return F.softmax(self.fc2(out), dim=1)  # BUG: probabilities, then fed to CrossEntropyLoss


def build(config) -> SeedResNet:
    """Factory for ``python -m resnet.preflight --model seed_model:build`` (input size as in the user's code)."""
    return SeedResNet(config.in_channels, config.num_classes, config.channels)
