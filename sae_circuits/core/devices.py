"""The default device: one rule for models and transcoders loaded without ``device=``.

Example:
    >>> default_device()
    'cpu'
"""

from __future__ import annotations

import torch

__all__ = ["default_device"]


def default_device() -> str:
    """``"cuda"`` when PyTorch sees a GPU, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"
