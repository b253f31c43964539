"""``python -m medconvnext`` whose validation also scores the EMA with its averaged BatchNorm statistics.

Why: ``train.ema_bn_batches`` (default 16) replaces the EMA's BatchNorm statistics, before each validation, by
statistics recomputed for the EMA's weights. Whether that helps or costs a BatchNorm model is measured here
inside one training run, so seeds and training steps are identical for both answers:

- the recomputed statistics depend only on the EMA's weights and the fixed training batches (they are reset and
  re-measured), and the EMA's weights do not depend on its statistics, so they are exactly what
  ``ema_bn_batches=16`` validates;
- this wrapper restores the averaged statistics after validation, so the EMA's buffers follow the
  ``ema_bn_batches=0`` trajectory, and the extra record fields (``val_auc_bn_averaged``, ``val_loss_bn_averaged``)
  are exactly what ``ema_bn_batches=0`` validates.

The checkpoints hold the averaged statistics, and the run selects its epoch on the recomputed ones: use it on
data without a test split (Vessel val), or read the curves in metrics.jsonl. bench_medmnist.py ``--ema-bn-both``
runs its rows through this wrapper.

    python bench/ema_bn_both.py train --data DIR --config configs/medmnist.yaml --model monai_densenet121 ...
"""

from __future__ import annotations

from typing import Any

import torch

from medconvnext.cli.main import main
from medconvnext.engine import trainer
from medconvnext.engine.validation import validate_loader


def _norms(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def _validate_both(self: Any, loop: Any, stats: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    if loop.ema is None or self.data.bn_loader is None:
        return _original(self, loop, stats)
    norms = _norms(loop.eval_model)
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    averaged = validate_loader(loop.eval_forward, self.data.val_loader, loop.device, self.cfg.amp,
                               self.setup.datalist.classes, self.step.loss_fn, self.data.tiling)
    record, val = _original(self, loop, stats)  # recomputes the statistics, then validates
    with torch.no_grad():
        for m, (mean, var, tracked) in zip(norms, saved, strict=True):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(tracked)
    record["val_auc_bn_averaged"] = averaged["metrics"]["auc"]
    record["val_loss_bn_averaged"] = averaged["loss"]
    return record, val


_original = trainer._RunHooks._validate
trainer._RunHooks._validate = _validate_both

if __name__ == "__main__":
    main()
