"""Seeding the global random generators (Python, NumPy, torch)."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (the global generators; MONAI transforms are seeded per epoch)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
