"""The one training loop with its replaceable steps (issue 29): classification, MIL bags and FCMAE reconstruction
go through the same ``build_loop`` / ``run_epochs`` (optimiser factory, gradient accumulation, schedule, hooks)."""

from __future__ import annotations

import pytest
import torch

from medconvnext.config import TrainConfig
from medconvnext.engine.loop import EpochHooks, EpochStats, Loop, LoopRecipe, build_loop, run_epochs
from medconvnext.engine.steps import ClassificationStep, ReconstructionStep, classification_step
from medconvnext.models import create_model
from medconvnext.models.fcmae import FCMAE3d

CPU = torch.device("cpu")
TINY = {"dims": (8, 16, 24, 32), "depths": (1, 1, 1, 1), "kernel_size": 3}


class Record(EpochHooks):
    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []
        self.epochs: list[EpochStats] = []

    def on_step(self, loop: Loop, epoch: int, step: int, loss: float) -> None:
        self.steps.append((epoch, step))

    def on_epoch_end(self, loop: Loop, stats: EpochStats) -> None:
        self.epochs.append(stats)


def _batches(shape: tuple[int, ...], n: int = 3) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(shape, generator=g), "label": torch.tensor([0, 1])} for _ in range(n)]


def _classifier(mil: bool) -> tuple[torch.nn.Module, list[dict[str, torch.Tensor]]]:
    model = create_model("convnext_atto", num_classes=2, in_channels=1, **TINY, **({"mil": {}} if mil else {}))
    return model, _batches((2, 3, 1, 32, 32, 32) if mil else (2, 1, 32, 32, 32))


@pytest.mark.parametrize("kind", ["classification", "mil", "reconstruction"])
def test_every_step_trains_through_the_one_loop_with_accumulation(kind):
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=2, warmup_epochs=0, lr=1e-3, accumulate=2, clip_grad_norm=1.0)
    generator = torch.Generator().manual_seed(0)
    if kind == "reconstruction":
        encoder = create_model("convnext_atto", num_classes=2, in_channels=1, **TINY)
        model = FCMAE3d(encoder, mask_unit=8, mask_ratio=0.6, decoder_dim=16)
        step, batches, recipe = ReconstructionStep(torch.contiguous_format), _batches((2, 1, 32, 32, 32)), \
            LoopRecipe(betas=(0.9, 0.95), layer_decay=False, ema=False)
    else:
        model, batches = _classifier(kind == "mil")
        step, recipe = classification_step(cfg, [1, 1], CPU, generator, model), LoopRecipe()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loop = build_loop(model, cfg, CPU, step, len(batches), generator, recipe=recipe)
    hooks = Record()
    run_epochs(loop, batches, range(1, 3), hooks)
    assert hooks.steps == [(e, s) for e in (1, 2) for s in (1, 2, 3)]
    assert loop.scheduler.last_epoch == 4  # 3 batches, accumulate 2: two optimizer steps per epoch
    assert [s.seen for s in hooks.epochs] == [6, 6] and all(torch.isfinite(torch.tensor(s.loss)) for s in hooks.epochs)
    assert loop.optimizer.param_groups[0]["betas"] == recipe.betas
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith(("stem", "encoder.stem")) for k in changed)  # the gradients reached the first layer


def test_reconstruction_masks_follow_the_steps_generator():
    torch.manual_seed(0)
    model = FCMAE3d(create_model("convnext_atto", num_classes=2, in_channels=1, **TINY), mask_unit=8,
                    decoder_dim=16).eval()
    step = ReconstructionStep(torch.contiguous_format)
    inputs = step.prepare(_batches((2, 1, 32, 32, 32), 1)[0], CPU)

    def loss(seed: int) -> float:
        step.masks = torch.Generator().manual_seed(seed)
        value, count = step.loss(model, inputs)
        assert count == 2
        return value.item()

    assert loss(1) == loss(1) != loss(2)


def test_classification_step_augments_each_patch_of_a_bag():
    seen: list[tuple[int, ...]] = []

    def augment(images: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(images.shape))
        return images.flip(-1)

    batch = _batches((2, 3, 1, 32, 32, 32), 1)[0]
    step = ClassificationStep(torch.nn.CrossEntropyLoss(), torch.Generator(), augment=augment)
    images, targets, count = step.prepare(batch, CPU)
    assert seen == [(6, 1, 32, 32, 32)] and images.shape == (2, 3, 1, 32, 32, 32) and count == 2
    torch.testing.assert_close(images, batch["image"].flip(-1))
    assert targets.tolist() == [0, 1]
