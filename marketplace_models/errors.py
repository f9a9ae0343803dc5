"""The project's error classes, at the bottom of the layers so every package can raise them."""

from __future__ import annotations

from types import ModuleType

# How to get torch where it is missing: the service's own install (`.[serve]`) has none.
TRAIN_EXTRA = "pip install 'marketplace-search[train]' (from a checkout: pip install '.[train]')"


class UserError(Exception):
    """A problem the user can fix: its message says what is wrong and what to do."""


class NeedsTorch(RuntimeError):
    """What was asked needs torch, and this environment (``.[serve]`` only) has none."""


def import_torch(why: str) -> ModuleType:
    """``torch``, or :class:`NeedsTorch` saying ``why`` it is needed and how to install it."""
    try:
        import torch
    except ImportError:
        raise NeedsTorch(f"{why} and torch is not installed: {TRAIN_EXTRA}") from None
    return torch
