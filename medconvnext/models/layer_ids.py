"""Layer numbering for layer-wise learning-rate decay, owned by the model (timm's ``group_matcher`` idea).

A model that can be fine-tuned with ``train.layer_decay`` says, for each of its parameter names, how deep the layer
is (:class:`LayerIds`: ``layer_id(name)`` in ``0 .. num_layers - 1``); the optimiser
(:func:`medconvnext.engine.optim.layer_decay_groups`) only scales rates by those depths and knows no family's names.
A family without the numbering (ConvMixer, ResNeXt, the MONAI networks) cannot use layer decay (a MIL model numbers its
layers through its encoder: :class:`~medconvnext.models.mil.MILLayerIds`): the
optimiser refuses it, naming the model.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class LayerIds(Protocol):
    """What layer-wise lr decay asks of a model."""

    @property
    def num_layers(self) -> int:
        """Depths 0 (the input side) .. ``num_layers - 1`` (the head)."""

    def layer_id(self, name: str) -> int:
        """The depth of the parameter ``name`` (as ``named_parameters()`` spells it)."""


class StagedLayerIds:
    """:class:`LayerIds` of a staged network (``pre_stem``/``stem``, ``downsample[i]``, ``stages[i][j]``, the rest
    the head), as BEiT and ConvNeXt V2's ``optim_factory.py`` number it: the stem 0, the blocks 1..sum(depths) in
    order (a downsampling layer with the first block of its stage), the head sum(depths) + 1."""

    stages: list  # the model's ``nn.ModuleList`` of stages, each a sequence of blocks

    @property
    def num_layers(self) -> int:
        return sum(len(stage) for stage in self.stages) + 2

    def layer_id(self, name: str) -> int:
        depths = [len(stage) for stage in self.stages]
        parts = name.split(".")
        if parts[0] in ("pre_stem", "stem"):
            return 0
        if parts[0] == "downsample":
            return 1 + sum(depths[: int(parts[1]) + 1])
        if parts[0] == "stages":
            return 1 + sum(depths[: int(parts[1])]) + int(parts[2])
        return sum(depths) + 1
