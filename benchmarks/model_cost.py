"""Print the ResNet's parameter count and forward FLOPs per patch at native 8x8 and upsampled to 64x64."""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from resnet import ResNet, ResNetConfig

UPSAMPLED = 64  # the original model's input size


def cost(config: ResNetConfig) -> tuple[int, int]:
    """Parameter count and forward FLOPs for one patch (eval mode, batch of one).

    Args:
        config: The model's configuration.

    Returns:
        (parameters, FLOPs), FLOPs as counted by ``torch.utils.flop_counter`` (a multiply-add counts 2).
    """
    model = ResNet(config).eval()
    x = torch.zeros(1, config.in_channels, config.height, config.width)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops()


def main() -> None:
    """Print the figures for the default config and its upsampled variant."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--channels", type=int, default=ResNetConfig.default().channels, help="network width")
    parser.add_argument("--upsample-to", type=int, default=UPSAMPLED, help="size of the upsampled variant")
    args = parser.parse_args()
    native = ResNetConfig.default(channels=args.channels)
    upsampled = ResNetConfig.default(channels=args.channels, upsample_to=args.upsample_to)
    rows = {"native": cost(native), "upsampled": cost(upsampled)}
    size = f"{native.in_channels} bands, {native.num_classes} classes, channels={native.channels}"
    print(f"ResNet cost per patch ({size})")
    print(f"{'input':>12} {'parameters':>12} {'forward FLOPs':>15}")
    for name, config in (("native", native), ("upsampled", upsampled)):
        params, flops = rows[name]
        height, width = config.input_size
        print(f"{f'{height}x{width}':>12} {params:>12,} {flops:>15,}")
    (p_native, f_native), (p_up, f_up) = rows["native"], rows["upsampled"]
    print(f"upsampled / native: {p_up / p_native:.1f}x parameters, {f_up / f_native:.1f}x FLOPs")


if __name__ == "__main__":
    main()
