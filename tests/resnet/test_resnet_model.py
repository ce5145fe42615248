"""Tests of the ResNet and its config: shapes, gradients, initialisation and finite logits on raw inputs."""

import pytest
import torch
import torch.nn.functional as F

from resnet import ResNet, ResNetConfig

SHAPES = [
    pytest.param(ResNetConfig.default(), id="14bands-8x8-7classes"),
    pytest.param(ResNetConfig(in_channels=4, height=3, width=3, num_classes=6), id="4bands-3x3-6classes"),
    pytest.param(ResNetConfig(in_channels=3, height=5, width=7, num_classes=2, channels=8), id="3bands-5x7-2classes"),
    pytest.param(ResNetConfig.default(upsample_to=64, channels=8), id="upsampled-64x64"),
]


@pytest.mark.parametrize("config", SHAPES)
def test_logits_shape(config):
    torch.manual_seed(0)
    model = ResNet(config)
    out = model(torch.randn(5, config.in_channels, config.height, config.width))
    assert out.shape == (5, config.num_classes)


@pytest.mark.parametrize("config", SHAPES[:2])
def test_every_parameter_gets_a_gradient(config):
    torch.manual_seed(0)
    model = ResNet(config)
    x = torch.randn(8, config.in_channels, config.height, config.width)
    y = torch.randint(config.num_classes, (8,))
    F.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


def test_gradients_nonzero_once_residual_branches_open():
    # At init the zero BN of each branch blocks the branch's gradient; with it opened, every parameter learns.
    torch.manual_seed(0)
    config = ResNetConfig.default(dropout=0.0, head_dropout=0.0)
    model = ResNet(config)
    for block in (model.layer1, model.layer2, model.layer3):
        torch.nn.init.ones_(block.bn3.weight)
    x = torch.randn(16, config.in_channels, config.height, config.width)
    F.cross_entropy(model(x), torch.randint(config.num_classes, (16,))).backward()
    zero = [name for name, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert zero == []


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_finite_logits_on_digital_numbers(train):
    torch.manual_seed(0)
    config = ResNetConfig.default()
    model = ResNet(config).train(train)
    x = torch.rand(16, config.in_channels, config.height, config.width) * 10_000  # unnormalised reflectance DN
    with torch.no_grad():
        out = model(x)
    assert torch.isfinite(out).all()


def test_projection_shortcut_is_registered_and_only_where_needed():
    model = ResNet(ResNetConfig.default())
    names = dict(model.named_parameters())
    assert names["layer3.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert model.layer3.downsample[0].stride == (2, 2)
    assert model.layer1.downsample is None and model.layer2.downsample is None


def test_last_branch_batchnorm_starts_at_zero():
    model = ResNet(ResNetConfig.default())
    for block in (model.layer1, model.layer2, model.layer3):
        assert torch.count_nonzero(block.bn3.weight) == 0
    assert torch.all(model.layer3.downsample[1].weight == 1)


def test_no_upsampling_by_default():
    model = ResNet(ResNetConfig.default())
    assert isinstance(model.upsample, torch.nn.Identity)
    assert model.head[1].in_features == 2 * 64 * 4 * 4


def test_eval_output_is_deterministic_logits():
    torch.manual_seed(0)
    model = ResNet(ResNetConfig.default()).eval()
    x = torch.randn(4, 14, 8, 8)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    assert (a < 0).any()  # logits, not probabilities


def test_config_round_trip():
    config = ResNetConfig(in_channels=4, height=3, width=3, num_classes=6, channels=16, upsample_to=12)
    assert ResNetConfig.from_dict(config.to_dict()) == config
    assert all(isinstance(v, (int, float, type(None))) for v in config.to_dict().values())


def test_config_from_metadata():
    from data.landcover import default_metadata

    metadata = default_metadata()
    config = ResNetConfig.from_metadata(metadata, channels=32)
    assert (config.in_channels, config.height, config.width) == (metadata.num_bands, metadata.height, metadata.width)
    assert config.num_classes == metadata.num_classes and config.channels == 32
    assert ResNetConfig.from_metadata(metadata) == ResNetConfig.default()


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"channels": 7}, "even"),
        ({"dropout": 1.0}, "dropout"),
        ({"upsample_to": 0}, "upsample_to"),
    ],
)
def test_config_rejects_bad_values(changes, match):
    with pytest.raises(ValueError, match=match):
        ResNetConfig.default(**changes)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="chanels"):
        ResNetConfig.from_dict({**ResNetConfig.default().to_dict(), "chanels": 3})
