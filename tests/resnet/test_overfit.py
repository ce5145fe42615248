"""The fixed model can learn: it overfits 64 patches of the default dataset to 100% training accuracy."""

import torch
import torch.nn.functional as F

from data import DEFAULT_DATASET_DIR
from data.folder import read_dataset
from resnet import ResNet, ResNetConfig

PATCHES = 64
MAX_STEPS = 300


def steps_to_memorise(model, x, y, lr=1e-3):
    """Full-batch AdamW steps until eval-mode accuracy on (x, y) is 100%, or None."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(1, MAX_STEPS + 1):
        model.train()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            if (model(x).argmax(dim=1) == y).all():
                return step
    return None


def test_overfits_64_default_patches():
    torch.manual_seed(0)
    dataset = read_dataset(DEFAULT_DATASET_DIR)
    metadata = dataset.metadata
    x = torch.tensor(dataset.train.pixels[:PATCHES])
    y = torch.tensor(dataset.train.labels[:PATCHES])
    assert len(torch.unique(y)) == metadata.num_classes  # every class present
    # Per-band normalisation with these 64 patches' statistics (bands range from dB to 10,000 DN).
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True)
    x = (x - mean) / std

    steps = steps_to_memorise(ResNet(ResNetConfig.from_metadata(metadata)), x, y)
    print(f"100% training accuracy on {PATCHES} patches after {steps} steps")
    assert steps is not None, f"did not reach 100% training accuracy in {MAX_STEPS} steps"
