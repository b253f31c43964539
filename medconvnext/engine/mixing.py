"""Mixup and CutMix on 3D training batches (the regularisers of the ConvNeXt paper's training recipe).

One mixing weight per batch, as in timm's ``Mixup``: each case is blended with a partner from a random permutation
of the batch, and the one-hot targets are blended with the same weight. CutMix pastes a box of the partner; in 3D a
box with side fraction ``s`` holds ``s**3`` of the voxels, so the box sides are drawn as ``(1 - lam) ** (1/3)`` and
the target weight is recomputed from the box actually pasted (after clipping at the border). MONAI's ``CutMix`` is
not used: its boxes have side fraction ``sqrt(1 - lam)`` whatever the dimension, so the pasted share of a 3D volume
is ``(1 - lam) ** 1.5`` while the labels are mixed with ``1 - lam``, and it needs a fixed batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BatchMixer:
    """Mixup (``mixup_alpha > 0``) and/or CutMix (``cutmix_alpha > 0``) with probability ``prob`` per batch.

    With both on, each mixed batch uses one of them with even odds (timm's ``switch_prob`` 0.5).
    """

    num_classes: int
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, stream: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed ``images`` and soft targets (rows sum to 1) for a ``(N, C, *spatial)`` batch.

        The draws come from ``generator`` (the run's seeded generator, saved with the training state), offset by
        ``stream`` so that DDP ranks mix differently.
        """
        targets = F.one_hot(labels, self.num_classes).to(images.dtype)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) + stream
        rng = np.random.default_rng(seed)
        if not self.enabled or rng.random() >= self.prob or len(images) < 2:
            return images, targets
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or rng.random() < 0.5)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        perm = torch.from_numpy(rng.permutation(len(images))).to(images.device)
        if use_cutmix:
            images, lam = _paste_box(images, perm, lam, rng)
        else:
            images = lam * images + (1.0 - lam) * images[perm]
        return images, lam * targets + (1.0 - lam) * targets[perm]


def _paste_box(
    images: torch.Tensor, perm: torch.Tensor, lam: float, rng: np.random.Generator
) -> tuple[torch.Tensor, float]:
    """Paste a box of each partner into each case; returns the images and the share of voxels kept."""
    spatial = images.shape[2:]
    side = (1.0 - lam) ** (1.0 / len(spatial))
    box = []
    for size in spatial:
        length = int(round(size * side))
        centre = int(rng.integers(0, size))
        box.append(slice(max(0, centre - length // 2), min(size, centre + length - length // 2)))
    region = (slice(None), slice(None), *box)
    mixed = images.clone()
    mixed[region] = images[region][perm]  # permute only the box, not the whole batch
    pasted = float(np.prod([s.stop - s.start for s in box])) / float(np.prod(spatial))
    return mixed, 1.0 - pasted
