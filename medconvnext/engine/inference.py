"""Predict with a trained checkpoint: the run's own deterministic preprocessing, then the model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medconvnext.data.preprocessing import Preprocessing
from medconvnext.data.transforms import deterministic_transforms
from medconvnext.engine.checkpoint import load_checkpoint
from medconvnext.engine.devices import autocast, resolve_device
from medconvnext.errors import UserError
from medconvnext.rundir import find_checkpoint


@dataclass
class Predictor:
    """A model in eval mode plus the preprocessing and class names it was trained with."""

    model: nn.Module
    preprocessing: Preprocessing
    class_names: list[str]
    device: torch.device
    amp: bool = True

    @classmethod
    def load(cls, model_path: str | Path, device: str = "auto") -> Predictor:
        """From a run directory (its best checkpoint) or a checkpoint file."""
        checkpoint = load_checkpoint(find_checkpoint(model_path))
        torch_device = resolve_device(device)
        model = checkpoint.build_model().to(torch_device)
        pre = Preprocessing.from_dict(checkpoint.meta["preprocessing"])
        return cls(model, pre, checkpoint.class_names, torch_device)

    def preprocess(self, image: str | Path) -> torch.Tensor:
        """(C, D, H, W) tensor exactly as in training; UserError when the file is unusable."""
        path = Path(image)
        if not path.exists():
            raise UserError(f"{path}: no such file")
        try:
            return deterministic_transforms(self.preprocessing)({"image": str(path)})["image"]
        except Exception as exc:  # noqa: BLE001 - MONAI wraps reader errors in RuntimeError
            raise UserError(f"{path}: cannot read or preprocess the image ({_root_cause(exc)})") from None

    @torch.no_grad()
    def predict_tensor(self, volume: torch.Tensor) -> np.ndarray:
        """Class probabilities (K,) for one preprocessed (C, D, H, W) volume."""
        with autocast(self.device, self.amp):
            logits = self.model(volume.unsqueeze(0).to(self.device))
        return torch.softmax(logits.float(), dim=1)[0].cpu().numpy()

    def predict_files(self, images: Sequence[str | Path]) -> np.ndarray:
        """Probabilities (N, K) for N image files."""
        return np.stack([self.predict_tensor(self.preprocess(image)) for image in images])


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
