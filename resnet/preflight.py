"""Preflight check: about a second, before training, proving that a model as built can be trained at all.

It catches the bugs of the original model and their kin: modules or parameters created inside ``forward`` (fresh
random weights every call, never trained), parameters missing from the optimizer or never reached by a gradient,
activations kept on ``self``, a nondeterministic eval mode, non-finite output, the wrong output shape, and
probabilities where ``CrossEntropyLoss`` needs logits. The model, its BatchNorm statistics, its gradients, its
train/eval modes, the optimizer and the global RNG are left exactly as they were.

Command line: ``python -m resnet.preflight [--in-channels C --height H --width W --num-classes K --channels N]``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import chain
from types import TracebackType

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from data.messages import brief_list, one_line
from resnet.config import ResNetConfig
from resnet.model import ResNet, unwrap

log = logging.getLogger(__name__)

# Eval-mode outputs of two identical calls must agree to this tolerance; it absorbs GPU kernels that sum in a
# different order, while dropout or fresh random weights change outputs by orders of magnitude more.
RTOL, ATOL = 1e-4, 1e-5
# Rows that are non-negative and sum to 1 within this tolerance are taken for softmax probabilities.
PROBABILITY_ATOL = 1e-4


class PreflightError(RuntimeError):
    """The model cannot be trained as built; the message names the module or parameter and what to do."""


def check(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    num_classes: int | None = None,
) -> str:
    """Run the preflight check on one batch and restore everything it touched.

    A model wrapped in ``DistributedDataParallel`` (or ``DataParallel``, or ``torch.compile``) is checked through
    its inner module, so no collective operation runs and any rank may call this alone.

    Args:
        model: The model, plain or wrapped.
        optimizer: The optimizer that will train it.
        inputs: One batch of (normalised) inputs, shape (N, C, H, W), on the model's device.
        targets: Class indices for the batch, shape (N,).
        num_classes: Expected number of logits per row; defaults to ``model.config.num_classes`` when present.

    Returns:
        A one-line summary (also logged).

    Raises:
        PreflightError: A check failed; the message says which module or parameter and why.
    """
    start = time.perf_counter()
    module = unwrap(model)
    if num_classes is None:
        num_classes = getattr(getattr(module, "config", None), "num_classes", None)
    snapshot = _Snapshot(module)
    rng_devices = [inputs.device] if inputs.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=rng_devices):
            notes = _run_checks(module, optimizer, inputs, targets, num_classes)
    finally:
        snapshot.restore()
    params = list(module.parameters())
    summary = (
        f"preflight OK in {time.perf_counter() - start:.2f}s: {sum(p.numel() for p in params):,} parameters in "
        f"{len(params)} tensors, all in the optimizer and all reached by gradients; finite logits of shape "
        f"{(inputs.shape[0], num_classes)}; eval mode deterministic"
    )
    for note in notes:
        log.warning("preflight: %s", note)
    log.info(summary)
    return "; ".join([summary, *notes])


class _Snapshot:
    """Values of all parameters and buffers, the gradients and every submodule's train/eval mode."""

    def __init__(self, module: nn.Module) -> None:
        self.values = [(t, t.detach().clone()) for t in chain(module.parameters(), module.buffers())]
        # The original gradient tensors are set aside untouched (backward would accumulate into them in place).
        self.grads = [(p, p.grad) for p in module.parameters()]
        self.modes = [(m, m.training) for m in module.modules()]

    def restore(self) -> None:
        with torch.no_grad():
            for tensor, value in self.values:
                tensor.copy_(value)
        for param, grad in self.grads:
            param.grad = grad
        for m, training in self.modes:
            m.training = training


class _ForwardTrace:
    """Watches every module call during a forward pass through global module hooks.

    It records calls of modules that are not registered in the model (created in ``forward`` or kept in a plain
    list), how often each registered module runs, and each registered module's output in completion order.
    """

    def __init__(self, module: nn.Module) -> None:
        self.names = {id(m): name or type(module).__name__ for name, m in module.named_modules(remove_duplicate=False)}
        self.stack: list[str | None] = []
        self.unregistered: list[tuple[nn.Module, str]] = []
        self.calls: Counter[str] = Counter()
        self.outputs: list[tuple[str, torch.Tensor]] = []
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> _ForwardTrace:
        self.handles = [register_module_forward_pre_hook(self._pre), register_module_forward_hook(self._post)]
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        for handle in self.handles:
            handle.remove()

    def _pre(self, m: nn.Module, args: tuple) -> None:
        name = self.names.get(id(m))
        if name is None:
            caller = next((n for n in reversed(self.stack) if n is not None), "forward()")
            self.unregistered.append((m, caller))
        else:
            self.calls[name] += 1
        self.stack.append(name)

    def _post(self, m: nn.Module, args: tuple, out: object) -> None:
        if self.stack:
            self.stack.pop()
        name = self.names.get(id(m))
        if name is not None and isinstance(out, torch.Tensor):
            self.outputs.append((name, out.detach().clone()))

    def raise_on_unregistered(self) -> None:
        """Fail on the first unregistered module that holds state (parameters or buffers)."""
        for m, caller in self.unregistered:
            if any(True for _ in chain(m.parameters(), m.buffers())):
                raise PreflightError(
                    f"{one_line(repr(m), limit=None)} runs inside '{caller}' but is not registered in the model: it "
                    "was created in forward() (fresh random weights every call, never trained, not in the optimizer) "
                    "or kept in a plain list/dict; build it once in __init__ and assign it to self (or use "
                    "nn.ModuleList)"
                )

    def shared_modules(self, module: nn.Module) -> list[str]:
        """Names of modules with parameters that ran more than once (outermost only)."""
        with_params = {name for name, m in module.named_modules() if any(True for _ in m.parameters())}
        repeated = sorted(n for n, count in self.calls.items() if count > 1 and n in with_params)
        return [n for n in repeated if not any(n.startswith(f"{other}.") for other in repeated)]

    def first_nonfinite(self) -> str | None:
        """Name of the first module (in completion order) whose output holds NaN or infinity."""
        return next((name for name, out in self.outputs if not torch.isfinite(out).all()), None)


def _run_checks(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int | None,
) -> list[str]:
    """All checks in order; returns notes (warnings) for things that are suspicious but legitimate."""
    params = dict(module.named_parameters())  # holding the tensors keeps their ids from being reused
    _check_optimizer(params, optimizer)
    for p in params.values():
        p.grad = None

    module.train()
    attributes = _tensor_attributes(module)
    with _ForwardTrace(module) as trace:
        out = module(inputs)
    _check_same_parameters(params, module, "during the first forward call")
    trace.raise_on_unregistered()
    _check_no_stored_tensors(module, attributes)
    _check_output(out, inputs.shape[0], num_classes, "train", trace)
    loss = F.cross_entropy(out, targets)
    if not torch.isfinite(loss):
        raise PreflightError(f"cross-entropy loss of the first batch is {loss.item()} although the logits are finite")
    loss.backward()
    _check_gradients(params)

    with torch.no_grad():
        module(inputs)
    _check_same_parameters(params, module, "between two forward calls")

    module.eval()
    with torch.no_grad(), _ForwardTrace(module) as first:
        a = module(inputs)
    with torch.no_grad(), _ForwardTrace(module) as second:
        b = module(inputs)
    first.raise_on_unregistered()
    _check_output(a, inputs.shape[0], num_classes, "eval", first)
    if not torch.allclose(a, b, rtol=RTOL, atol=ATOL):
        culprit = next(
            (
                n1
                for (n1, o1), (_, o2) in zip(first.outputs, second.outputs, strict=False)
                if o1.shape != o2.shape or not torch.allclose(o1, o2, rtol=RTOL, atol=ATOL)
            ),
            "forward()",
        )
        raise PreflightError(
            f"eval-mode output differs between two identical calls (max difference "
            f"{(a - b).abs().max().item():.3g}), first at module '{culprit}': dropout or other randomness stays on in "
            "eval mode (e.g. F.dropout without training=self.training) or weights are created in forward()"
        )

    return [
        f"module '{name}' runs {trace.calls[name]} times in one forward pass, sharing its weights; "
        "build separate blocks if that is not intended"
        for name in trace.shared_modules(module)
    ]


def _check_optimizer(params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name for name, p in params.items() if p.requires_grad and id(p) not in in_optimizer]
    if missing:
        raise PreflightError(
            f"{len(missing)} parameter(s) not in the optimizer, first {_first(missing)}: they would never be "
            "updated; build the optimizer from model.parameters() after the model is complete"
        )


def _check_same_parameters(before: dict[str, nn.Parameter], module: nn.Module, when: str) -> None:
    after = dict(module.named_parameters())
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    replaced = sorted(n for n in before.keys() & after.keys() if after[n] is not before[n])
    if added or removed or replaced:
        parts = [
            f"{label} {_first(names)}"
            for label, names in (("new", added), ("removed", removed), ("replaced", replaced))
            if names
        ]
        raise PreflightError(
            f"the parameter set changed {when} ({'; '.join(parts)}): a module or parameter is created in forward(), "
            "so it starts from fresh random weights and the optimizer never sees it; build it once in __init__"
        )


def _tensor_attributes(module: nn.Module) -> dict[tuple[str, str], int]:
    """Plain tensor attributes (not parameters or buffers) of every submodule, as ids."""
    return {
        (name, attr): id(value)
        for name, m in module.named_modules()
        for attr, value in vars(m).items()
        if isinstance(value, torch.Tensor)
    }


def _check_no_stored_tensors(module: nn.Module, before: dict[tuple[str, str], int]) -> None:
    for key, ident in _tensor_attributes(module).items():
        if before.get(key) != ident:
            name, attr = key
            where = f"module '{name}'" if name else f"the model ({type(module).__name__})"
            raise PreflightError(
                f"{where} stores a tensor in self.{attr} during forward(): activations kept on the module hold the "
                "autograd graph and memory between steps and break under DDP; keep them in local variables"
            )


def _check_output(out: object, batch: int, num_classes: int | None, mode: str, trace: _ForwardTrace) -> None:
    if not isinstance(out, torch.Tensor):
        raise PreflightError(f"forward() returns {type(out).__name__} in {mode} mode; it must return a logits tensor")
    wrong_classes = num_classes is not None and (out.ndim != 2 or out.shape[1] != num_classes)
    if out.ndim != 2 or out.shape[0] != batch or wrong_classes:
        expected = f"({batch}, {num_classes if num_classes is not None else 'num_classes'})"
        raise PreflightError(f"output of shape {tuple(out.shape)} in {mode} mode; expected logits of shape {expected}")
    if not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).sum())
        source = trace.first_nonfinite() or "forward()"
        raise PreflightError(
            f"output has {bad} non-finite value(s) in {mode} mode, first produced by module '{source}'; check input "
            "normalisation and initialisation"
        )
    if (
        out.shape[1] > 1
        and (out >= 0).all()
        and torch.allclose(out.sum(dim=1), torch.ones_like(out[:, 0]), atol=PROBABILITY_ATOL)
    ):
        raise PreflightError(
            f"output rows in {mode} mode are non-negative and sum to 1, so the model returns probabilities; "
            "CrossEntropyLoss applies log-softmax itself and needs raw logits: remove the final softmax"
        )


def _check_gradients(params: dict[str, nn.Parameter]) -> None:
    # Only a missing gradient (None) is an error. A zero gradient is legitimate: with the last BatchNorm of each
    # residual branch initialised to zero, every earlier parameter of that branch gets exactly zero gradient on
    # the first step, yet it is connected and starts learning once the BatchNorm weight moves.
    frozen = [name for name, p in params.items() if not p.requires_grad]
    if frozen:
        raise PreflightError(
            f"{len(frozen)} parameter(s) have requires_grad=False, first {_first(frozen)}: they are never trained; "
            "unfreeze them or register them as buffers"
        )
    missing = [name for name, p in params.items() if p.grad is None]
    if missing:
        raise PreflightError(
            f"{len(missing)} parameter(s) get no gradient, first {_first(missing)}: they are not used in forward() "
            "(or their output is detached); remove them or use them (DDP also fails on unused parameters)"
        )
    nonfinite = [name for name, p in params.items() if not torch.isfinite(p.grad).all()]
    if nonfinite:
        raise PreflightError(f"non-finite gradient in {_first(nonfinite)} on the first batch")


def _first(names: Sequence[str]) -> str:
    """The first three names, quoted, then how many there are in all."""
    return brief_list(names, limit=3, quote=True)


def _load_factory(spec: str) -> Callable[[ResNetConfig], nn.Module]:
    """Import ``package.module:callable``."""
    module_name, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module_name), attr or "build")


def main(argv: Sequence[str] | None = None) -> int:
    """Check a freshly built model on a random batch; print OK or the error.

    Args:
        argv: Command-line arguments (defaults to ``sys.argv[1:]``).

    Returns:
        The exit status: 0 when the check passes, 1 when it fails.
    """
    default = ResNetConfig.default()
    parser = argparse.ArgumentParser(prog="python -m resnet.preflight", description=__doc__.splitlines()[0])
    parser.add_argument("--in-channels", type=int, default=default.in_channels, help="spectral bands")
    parser.add_argument("--height", type=int, default=default.height, help="patch height in pixels")
    parser.add_argument("--width", type=int, default=default.width, help="patch width in pixels")
    parser.add_argument("--num-classes", type=int, default=default.num_classes, help="number of classes")
    parser.add_argument("--channels", type=int, default=default.channels, help="network width")
    parser.add_argument("--batch-size", type=int, default=16, help="size of the random batch")
    parser.add_argument(
        "--model", default=None, help="check another model: 'package.module:factory', factory(config) -> nn.Module"
    )
    args = parser.parse_args(argv)
    try:
        config = ResNetConfig.default(
            in_channels=args.in_channels,
            height=args.height,
            width=args.width,
            num_classes=args.num_classes,
            channels=args.channels,
        )
        torch.manual_seed(0)
        model = _load_factory(args.model)(config) if args.model else ResNet(config)
        optimizer = torch.optim.AdamW(model.parameters())
        inputs = torch.randn(args.batch_size, config.in_channels, config.height, config.width)
        targets = torch.randint(config.num_classes, (args.batch_size,))
        summary = check(model, optimizer, inputs, targets, num_classes=config.num_classes)
    except (PreflightError, ValueError) as err:
        print(f"preflight FAILED: {err}", file=sys.stderr)
        return 1
    params = sum(p.numel() for p in model.parameters())
    print(f"OK: {params:,} parameters; {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
