"""One-line error messages for users: collapse whitespace, cut long text and lists, show numbers as Python does."""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

MAX_DETAIL = 300  # characters of a library's own error text quoted inside one of ours
MAX_LISTED = 5  # items of a list shown before "… (N in all)"


def one_line(text: object, limit: int | None = MAX_DETAIL) -> str:
    """``text`` (an exception or any object) on one line, whitespace collapsed, cut to ``limit`` characters.

    Args:
        text: What to show.
        limit: Most characters kept (the last one an ellipsis when cut); None keeps all (for our own messages,
            whose lists :func:`brief_list` already shortened).
    """
    flat = " ".join(str(text).split())
    return flat if limit is None or len(flat) <= limit else flat[: limit - 1] + "…"


def plain(value: Any) -> Any:
    """A NumPy scalar as the Python value it holds (``np.float64(0.5)`` -> ``0.5``); anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def brief_list(items: Iterable[Any], limit: int = MAX_LISTED, *, quote: bool = False) -> str:
    """Comma-separated items, the first ``limit`` only when there are more: ``a, b, c, d, e … (2,000 in all)``.

    Args:
        items: The values to list.
        limit: How many are shown when the list is longer.
        quote: Show each as its ``repr`` (for names that may hold spaces or be empty).
    """
    values = [plain(v) for v in items]
    shown = [repr(v) if quote else str(v) for v in values[:limit]]
    text = ", ".join(shown)
    return text if len(values) <= limit else f"{text} … ({len(values):,} in all)"


def torch_load_failure(path: object, err: BaseException, what: str) -> str:
    """The one-line reason ``torch.load(path, weights_only=True)`` failed, without PyTorch's advice to bypass it.

    A file that names Python objects other than tensors (a pickle that could run code when loaded) is refused for
    safety and said so; anything else is a damaged file.

    Args:
        path: The file that was loaded.
        err: What ``torch.load`` raised.
        what: What the file should be, for example ``"weights file"`` or ``"checkpoint"``.
    """
    text = str(err)
    found = _UNSAFE_GLOBAL.search(text)
    if isinstance(err, pickle.UnpicklingError) and found:
        return (
            f"{path}: refused for safety: the {what} holds objects other than tensors ({found.group(1)}), a pickle "
            "that could run code when loaded; use one written by this project's tools"
        )
    detail = _TORCH_DETAIL.search(text)
    reason = detail.group(1) if detail else text.split(". ")[0]
    return f"{path}: not a readable {what}, truncated or corrupt ({one_line(reason, limit=120)})"


# How torch.load(weights_only=True) names a global it refused (PyTorch 2.4-2.14), and the detail of other failures.
_UNSAFE_GLOBAL = re.compile(r"unsupported (?:global: )?GLOBAL (\S+)", re.IGNORECASE)
_TORCH_DETAIL = re.compile(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", re.DOTALL)
