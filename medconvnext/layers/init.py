"""Weight initialisation shared by the model families."""

from torch import nn


def init_weights(module: nn.Module) -> None:
    """ConvNeXt init: truncated normal (std 0.02) weights and zero bias for Conv3d and Linear."""
    if isinstance(module, (nn.Conv3d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
