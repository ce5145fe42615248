"""Tests of the preflight check: it rejects the original model and each failure mode, and passes the fixed one."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from seed_model import ConvBlock, SeedResNet
from torch import nn

from resnet import ResNet, ResNetConfig
from resnet.preflight import PreflightError, check

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONFIG = ResNetConfig.default()


def batch(config=CONFIG, n=8):
    x = torch.randn(n, config.in_channels, config.height, config.width)
    return x, torch.randint(config.num_classes, (n,))


def setup(model):
    torch.manual_seed(0)
    return model, torch.optim.AdamW(model.parameters()), *batch(getattr(model, "config", CONFIG))


# --- the original model -------------------------------------------------------------------------------------------


def test_rejects_seed_model_naming_the_unregistered_projection():
    torch.manual_seed(0)
    model = SeedResNet(CONFIG.in_channels, CONFIG.num_classes)
    x, y = batch(n=4)
    with pytest.raises(
        PreflightError,
        match=r"Conv2d\(64, 128, kernel_size=\(1, 1\), stride=\(2, 2\)\) runs inside 'block3'.*not registered",
    ):
        check(model, torch.optim.Adam(model.parameters()), x, y, num_classes=CONFIG.num_classes)


class SelfAssignedShortcut(ConvBlock):
    """The other way users build a module in forward: assigned to self, so it registers a new one every call."""

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        self.shortcut = nn.Conv2d(self.in_channels, self.out_channels, 1, stride=self.stride)
        return F.relu(out + self.shortcut(x))


def test_rejects_parameter_set_changing_in_forward():
    torch.manual_seed(0)
    model = SeedResNet(CONFIG.in_channels, CONFIG.num_classes, channels=8, size=8)
    model.block3 = SelfAssignedShortcut(8, 16, stride=2)
    x, y = batch(n=4)
    with pytest.raises(
        PreflightError, match=r"parameter set changed during the first forward call \(new 'block3.shortcut"
    ):
        check(model, torch.optim.Adam(model.parameters()), x, y, num_classes=CONFIG.num_classes)


def test_seed_model_without_the_projection_bug_still_fails_on_stored_activations():
    torch.manual_seed(0)
    model = SeedResNet(CONFIG.in_channels, CONFIG.num_classes, channels=8, size=8)
    model.block3 = ConvBlock(8, 8)  # no projection needed, so no Conv2d in forward
    model.fc1 = nn.Linear(8 * 8 * 8, 128)  # block3 no longer halves the 8x8 maps
    x, y = batch(n=4)
    with pytest.raises(PreflightError, match=r"stores a tensor in self\.(out|x1)"):
        check(model, torch.optim.Adam(model.parameters()), x, y, num_classes=CONFIG.num_classes)


# --- the fixed model ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config", [CONFIG, ResNetConfig(in_channels=4, height=3, width=3, num_classes=6)], ids=["default", "4x3x3x6"]
)
def test_fixed_model_passes(config):
    model, optimizer, x, y = setup(ResNet(config))
    summary = check(model, optimizer, x, y)
    assert "preflight OK" in summary and "parameters" in summary


def test_leaves_weights_optimizer_bn_stats_grads_modes_and_rng_unchanged():
    model, optimizer, x, y = setup(ResNet(CONFIG))
    F.cross_entropy(model(x), y).backward()
    optimizer.step()  # so the optimizer has state and parameters have gradients
    model.eval()
    model.head.train()  # a mixed mode must come back as it was
    state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(optimizer.state_dict())
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    rng = torch.get_rng_state()

    check(model, optimizer, x, y)

    assert state.keys() == model.state_dict().keys()
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name  # includes BN running_mean/var and num_batches_tracked
    after = optimizer.state_dict()
    assert after["param_groups"] == opt_state["param_groups"]
    for i, s in opt_state["state"].items():
        for key, value in s.items():
            assert torch.equal(torch.as_tensor(after["state"][i][key]), torch.as_tensor(value))
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, grads[name]), name
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert torch.equal(torch.get_rng_state(), rng)


def test_restores_state_after_a_failure():
    model, optimizer, x, y = setup(ResNet(CONFIG))
    model.head.append(nn.Softmax(dim=1))
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(PreflightError):
        check(model, optimizer, x, y)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert all(p.grad is None for p in model.parameters())
    assert model.training


@pytest.mark.timeout(120)
def test_works_through_ddp(tmp_path):
    import gc

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model, _, x, y = setup(ResNet(CONFIG))
        ddp = DistributedDataParallel(model)
        optimizer = torch.optim.AdamW(ddp.parameters())
        assert "preflight OK" in check(ddp, optimizer, x, y)
        # Training through DDP still works afterwards.
        F.cross_entropy(ddp(x), y).backward()
        optimizer.step()
        # Free DDP's reducer while its process group lives: freeing it after destroy_process_group() hung in
        # ProcessGroupGloo's destructor (seen once in CI).
        del ddp, optimizer
        gc.collect()
    finally:
        dist.destroy_process_group()


# --- each failure mode on its own ---------------------------------------------------------------------------------


def test_parameter_not_in_optimizer():
    model, _, x, y = setup(ResNet(CONFIG))
    optimizer = torch.optim.SGD([p for n, p in model.named_parameters() if not n.startswith("head.4")], lr=0.1)
    with pytest.raises(PreflightError, match=r"2 parameter\(s\) not in the optimizer, first 'head.4.weight'"):
        check(model, optimizer, x, y)


def test_frozen_by_mistake():
    model, optimizer, x, y = setup(ResNet(CONFIG))
    model.stem[0].weight.requires_grad_(False)
    with pytest.raises(PreflightError, match=r"requires_grad=False, first 'stem.0.weight'"):
        check(model, optimizer, x, y)


class WithUnused(ResNet):
    def __init__(self, config):
        super().__init__(config)
        self.auxiliary = nn.Linear(4, 4)  # built, never called


def test_unused_parameter_gets_no_gradient():
    model, optimizer, x, y = setup(WithUnused(CONFIG))
    with pytest.raises(PreflightError, match=r"get no gradient, first 'auxiliary.weight'"):
        check(model, optimizer, x, y)


class AlwaysDropout(nn.Module):
    def forward(self, x):
        return F.dropout(x, 0.5, training=True)  # the bug: ignores self.training


def test_nondeterministic_eval_names_the_module():
    model, optimizer, x, y = setup(ResNet(CONFIG))
    model.head[3] = AlwaysDropout()
    with pytest.raises(PreflightError, match=r"eval-mode output differs .* module 'head.3'"):
        check(model, optimizer, x, y)


def test_nonfinite_output_names_the_module():
    model, optimizer, x, y = setup(ResNet(CONFIG))
    with torch.no_grad():
        model.layer2.bn2.bias[0] = float("inf")
    with pytest.raises(
        PreflightError, match=r"non-finite value\(s\) in train mode, first produced by module 'layer2.bn2'"
    ):
        check(model, optimizer, x, y)


def test_wrong_number_of_classes():
    model, optimizer, x, y = setup(ResNet(CONFIG))
    with pytest.raises(
        PreflightError, match=r"output of shape \(8, 7\) in train mode; expected logits of shape \(8, 5\)"
    ):
        check(model, optimizer, x, y, num_classes=5)


class Unflattened(ResNet):
    def forward(self, x):
        return super().forward(x)[:, :, None]


def test_wrong_output_rank():
    model, optimizer, x, y = setup(Unflattened(CONFIG))
    with pytest.raises(PreflightError, match=r"output of shape \(8, 7, 1\)"):
        check(model, optimizer, x, y)


class ProbabilityHead(ResNet):
    def forward(self, x):
        return F.softmax(super().forward(x), dim=1)


def test_probabilities_instead_of_logits():
    model, optimizer, x, y = setup(ProbabilityHead(CONFIG))
    with pytest.raises(PreflightError, match=r"returns probabilities.*raw logits"):
        check(model, optimizer, x, y)


class KeepsFeatures(ResNet):
    def forward(self, x):
        self.features = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.head(self.features)


def test_activations_stored_on_self():
    model, optimizer, x, y = setup(KeepsFeatures(CONFIG))
    with pytest.raises(PreflightError, match=r"stores a tensor in self.features"):
        check(model, optimizer, x, y)


class PlainListBlocks(ResNet):
    def __init__(self, config):
        super().__init__(config)
        self.extra = [nn.Conv2d(config.channels, config.channels, 1)]  # a plain list: not registered

    def forward(self, x):
        return self.head(self.layer3(self.extra[0](self.stem(x))))


def test_module_kept_in_plain_list():
    model, optimizer, x, y = setup(PlainListBlocks(CONFIG))
    with pytest.raises(PreflightError, match=r"Conv2d\(64, 64, kernel_size=\(1, 1\).*not registered.*nn.ModuleList"):
        check(model, optimizer, x, y)


class SharedBlock(ResNet):
    def forward(self, x):
        return self.head(self.layer3(self.layer1(self.layer1(self.stem(x)))))


def test_shared_block_is_a_note_not_an_error():
    model, _, x, y = setup(SharedBlock(CONFIG))
    del model.layer2
    optimizer = torch.optim.AdamW(model.parameters())
    assert "module 'layer1' runs 2 times" in check(model, optimizer, x, y)


# --- command line -------------------------------------------------------------------------------------------------


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    return subprocess.run(
        [sys.executable, "-m", "resnet.preflight", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def test_cli_ok():
    result = run_cli("--in-channels", "4", "--height", "3", "--width", "3", "--num-classes", "6", "--channels", "16")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: ") and "parameters" in result.stdout


def test_cli_fails_on_seed_model():
    result = run_cli("--model", "seed_model:build", "--batch-size", "2", "--channels", "8")
    assert result.returncode == 1
    assert "preflight FAILED" in result.stderr and "not registered" in result.stderr
