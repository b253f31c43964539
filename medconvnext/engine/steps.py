"""The replaceable part of the one training loop: what a batch becomes on the device, and its loss.

As in timm's ``TrainingTask`` (``timm/task/task.py``) and MONAI's ``prepare_batch`` / ``iteration_update``, the
loop (:mod:`medconvnext.engine.loop`) owns the optimisation (AMP, gradient accumulation, clipping, schedule,
EMA, the training state) and a :class:`Step` owns the arithmetic of one batch:

- :class:`ClassificationStep`: cross-entropy of volumes (N, C, D, H, W) or of MIL bags (N, K, C, D, H, W), with
  the augmentation on the device and mixup / CutMix; built by ``train`` (:func:`classification_step`);
- :class:`ReconstructionStep`: FCMAE's masked reconstruction loss (:mod:`medconvnext.models.fcmae`); built by
  ``pretrain`` (:mod:`medconvnext.engine.pretrain`), which re-seeds its masks every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from medconvnext.config import TrainConfig
from medconvnext.engine import distributed as dist
from medconvnext.engine.devices import as_model_input
from medconvnext.engine.feeding import BatchAugment
from medconvnext.engine.mixing import BatchMixer
from medconvnext.models import model_memory_format

__all__ = ["ClassificationStep", "ReconstructionStep", "Step", "classification_step"]


class Step(Protocol):
    """One training batch: :meth:`prepare` runs outside autocast, :meth:`loss` under it; the loop then scales the
    loss by ``1 / train.accumulate``, backpropagates it and steps the optimiser."""

    def prepare(self, batch: dict[str, Any], device: torch.device) -> Any:
        """``batch`` (a loader's dict) on ``device`` in the model's memory format, augmented / mixed: what
        :meth:`loss` takes (MONAI's ``prepare_batch``)."""
        ...

    def loss(self, model: nn.Module, inputs: Any) -> tuple[torch.Tensor, int]:
        """The forward of ``inputs``: (scalar loss, the items it is the mean over, for the epoch's mean loss)."""
        ...


@dataclass
class ClassificationStep:
    """Cross-entropy of class logits; MIL bags go through it too (the MIL model pools its patches itself)."""

    loss_fn: nn.Module  # (logits (N, K), targets (N,) classes or (N, K) mixed probabilities) -> scalar
    generator: torch.Generator  # the mixing draws (the loop's generator: saved with the training state)
    memory_format: torch.memory_format = torch.contiguous_format  # the layout the model was put in
    mixer: BatchMixer | None = None  # mixup / CutMix; None when both are off
    augment: BatchAugment | None = None  # the random augmentation when it runs on the device (data.augment_on)

    def prepare(self, batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(images (N, C, D, H, W) or bags (N, K, C, D, H, W), targets, N)."""
        images = as_model_input(batch["image"], device)
        labels = batch["label"].to(device, non_blocking=True)
        if self.augment is not None:
            # MIL bags: every patch is augmented on its own
            images = (self.augment(images.flatten(0, 1)).reshape(images.shape) if images.ndim == 6
                      else self.augment(images))
        targets = labels
        if self.mixer is not None:
            images, targets = self.mixer(images, labels, self.generator, stream=dist.rank())
        if images.ndim == 5:  # a MIL model lays out its (N * K) patches itself
            images = images.contiguous(memory_format=self.memory_format)
        return images, targets, len(labels)

    def loss(self, model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor, int]) -> tuple[torch.Tensor, int]:
        images, targets, count = inputs
        return self.loss_fn(model(images), targets), count


def classification_step(cfg: TrainConfig, class_counts: list[int], device: torch.device, generator: torch.Generator,
                        model: nn.Module, augment: BatchAugment | None = None) -> ClassificationStep:
    """``train``'s step: cross-entropy (class-weighted under ``train.balance = weights``, with ``class_counts`` per
    class, each >= 1; label smoothing), mixup / CutMix, ``model``'s memory format."""
    weight = None
    if cfg.balance == "weights":
        counts = torch.tensor(class_counts, dtype=torch.float32)
        weight = (counts.sum() / (len(class_counts) * counts)).to(device)  # inverse frequency, mean 1
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    mixer = BatchMixer(len(class_counts), cfg.mixup, cfg.cutmix, cfg.mix_prob)
    return ClassificationStep(loss_fn, generator, model_memory_format(model), mixer if mixer.enabled else None,
                              augment)


@dataclass
class ReconstructionStep:
    """FCMAE's masked reconstruction (ConvNeXt V2, Woo et al. 2023): the model is the
    :class:`~medconvnext.models.fcmae.FCMAE3d` (possibly DDP-wrapped), whose forward draws the masks from
    :attr:`masks` and returns the loss over the masked units."""

    memory_format: torch.memory_format  # the encoder's layout
    # re-seeded per epoch and rank by pretrain's hooks, so a resumed run masks as an uninterrupted one
    masks: torch.Generator = field(default_factory=torch.Generator)
    augment: BatchAugment | None = None  # the random augmentation when it runs on the device (data.augment_on)

    def prepare(self, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        """Images (N, C, D, H, W); labels are ignored."""
        images = as_model_input(batch["image"], device)
        if self.augment is not None:
            images = self.augment(images)
        return images.contiguous(memory_format=self.memory_format)

    def loss(self, model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, int]:
        return model(inputs, generator=self.masks)["loss"], len(inputs)
