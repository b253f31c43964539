"""Multiple-instance learning: one volume label from a bag of patches, pooled by gated attention.

Ilse, Tomczak & Welling, "Attention-based Deep Multiple Instance Learning", ICML 2018 (eq. 9, gated attention):
each instance (a patch, or a sliding window at inference) is embedded by one encoder, ``h_k`` (L,); its weight is

    a_k = softmax_k( w^T (tanh(V h_k) ⊙ sigmoid(U h_k)) )

and the bag's embedding ``z = sum_k a_k h_k`` goes through a linear head to the volume's logits. The loss is on the
volume label alone, so a fine finding in one patch is learned without voxel labels, and the weights ``a`` say
which windows the prediction rests on (the window map of ``predict --window-map``). MONAI's
``monai/networks/nets/milmodel.py`` is the 2D pathology counterpart (its ``att`` mode is the ungated one).

The encoder is any registered family with ``forward_features`` / ``forward_head(features, pre_logits=True)``
(ConvNeXt, ConvMixer, ResNeXt): its pooled pre-logit features are ``h``; its own classifier is dropped.
"""

from __future__ import annotations

import torch
from torch import nn

from medconvnext.models._memory import model_memory_format
from medconvnext.models.layer_ids import LayerIds

DEFAULT_ATTENTION_DIM = 128  # D of the paper (its L = 500 is the encoder's width here)


class GatedAttention(nn.Module):
    """Gated attention weights over instances: (B, K, L) embeddings -> (B, K) weights that sum to 1 over K."""

    def __init__(self, features: int, attention_dim: int = DEFAULT_ATTENTION_DIM) -> None:
        super().__init__()
        self.V = nn.Linear(features, attention_dim)  # noqa: N815 - the paper's names
        self.U = nn.Linear(features, attention_dim)  # noqa: N815
        self.w = nn.Linear(attention_dim, 1)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        scores = self.w(torch.tanh(self.V(embeddings)) * torch.sigmoid(self.U(embeddings))).squeeze(-1)
        # softmax in float32 whatever autocast chose: thousands of windows in one bag at inference
        return torch.softmax(scores.float(), dim=-1)


class MILClassifier(nn.Module):
    """Encoder -> gated-attention MIL pooling -> linear head: one logit vector per bag (volume).

    Inputs:
        (B, K, C, D, H, W): B bags of K patches each -> (B, num_classes) logits (training: the loop's loss on the
        volume label works unchanged).
        (N, C, D, H, W): N bags of one instance (attention 1), i.e. each window classified alone by the same
        head -- what whole-volume evaluation, BatchNorm recomputation and export feed a classifier.

    Inference over every window of a volume uses :meth:`embed` (chunks of windows, bounded memory) and :meth:`pool`
    (once, over all the embeddings): :func:`medconvnext.engine.sliding_window.sliding_window_mil`.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, attention_dim: int = DEFAULT_ATTENTION_DIM,
                 embedding_norm: bool = False) -> None:
        """
        Args:
            encoder: a registered classifier; its head is dropped and its pooled features embed each patch.
            attention_dim: D of the gated attention.
            embedding_norm: standardise each embedding feature over the instances (BatchNorm1d: batch statistics
                in training, running ones at inference) in place of the encoder's per-instance head norm
                (ConvNeXt's LayerNorm, dropped). Why (``bench/mil_pooling.py``, docs/benchmarks.md): on the
                max-pooled features of a frozen encoder, the attention head finds a nodule from scan labels within
                5 epochs when each feature is standardised, and is still at chance then with a per-instance
                LayerNorm. ``train`` turns it on; False (the default) is the earlier design, kept so that its
                checkpoints rebuild as they were trained.
        """
        super().__init__()
        if not (callable(getattr(encoder, "forward_features", None)) and callable(getattr(encoder, "forward_head",
                                                                                        None))):
            raise ValueError(f"MIL needs an encoder with forward_features/forward_head (ConvNeXt, ConvMixer, "
                             f"ResNeXt); {type(encoder).__name__} has none")
        if isinstance(attention_dim, bool) or not isinstance(attention_dim, int) or attention_dim < 1:
            raise ValueError(f"mil.attention_dim must be a positive integer, got {attention_dim!r}")
        if not isinstance(embedding_norm, bool):
            raise ValueError(f"mil.embedding_norm must be true or false, got {embedding_norm!r}")
        self.encoder = encoder
        # its classifier is never used (forward_head with pre_logits=True stops before it): dropped, so that DDP
        # sees no parameter without a gradient
        self.encoder.head = nn.Identity()
        self.num_features = int(encoder.num_features)
        self.min_input_size = encoder.min_input_size
        self.embedding_norm: nn.Module = nn.Identity()
        if embedding_norm:
            if hasattr(self.encoder, "head_norm"):
                self.encoder.head_norm = nn.Identity()
            self.embedding_norm = nn.BatchNorm1d(self.num_features)
        self.attention = GatedAttention(self.num_features, attention_dim)
        self.head = nn.Linear(self.num_features, num_classes)

    def embed(self, windows: torch.Tensor) -> torch.Tensor:
        """(N, C, D, H, W) patches -> (N, L) pooled pre-logit features of the encoder (standardised per feature
        with ``embedding_norm``; in training that needs N >= 2)."""
        windows = windows.contiguous(memory_format=model_memory_format(self))
        return self.embedding_norm(self.encoder.forward_head(self.encoder.forward_features(windows), pre_logits=True))

    def pool(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, L) instance embeddings -> ((B, num_classes) logits, (B, K) attention weights summing to 1)."""
        if embeddings.ndim != 3:
            raise ValueError(f"pool expects (B, K, L) embeddings, got shape {tuple(embeddings.shape)}")
        weights = self.attention(embeddings)
        bag = torch.einsum("bk,bkl->bl", weights.to(embeddings.dtype), embeddings)
        return self.head(bag), weights

    def instance_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(..., L) -> (..., num_classes): each instance alone through the head (a bag of one; its attention is 1)."""
        return self.head(embeddings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5:  # N bags of one instance
            return self.instance_logits(self.embed(x))
        if x.ndim != 6:
            raise ValueError(f"MILClassifier expects (B, K, C, D, H, W) bags or (N, C, D, H, W) patches, got shape "
                             f"{tuple(x.shape)}")
        bags, size = x.shape[:2]
        embeddings = self.embed(x.flatten(0, 1)).view(bags, size, -1)
        return self.pool(embeddings)[0]


class MILLayerIds:
    """:class:`~medconvnext.models.layer_ids.LayerIds` of a MIL model whose encoder numbers its layers: the encoder's
    depths, and the MIL head (embedding norm, attention, linear layer) at the encoder's head depth, so that
    ``train.layer_decay`` trains the head at ``train.lr`` and the encoder's early layers slowest. Built by
    :func:`medconvnext.engine.optim.model_layer_ids` once it has checked the encoder."""

    def __init__(self, model: MILClassifier) -> None:
        self.encoder: LayerIds = model.encoder  # type: ignore[assignment]

    @property
    def num_layers(self) -> int:
        return self.encoder.num_layers

    def layer_id(self, name: str) -> int:
        if name.startswith("encoder."):
            return self.encoder.layer_id(name.removeprefix("encoder."))
        return self.num_layers - 1


def is_mil(model: nn.Module) -> bool:
    """Whether ``model`` (possibly inside DDP / torch.compile wrappers) pools instances with attention."""
    plain = getattr(model, "module", model)
    plain = getattr(plain, "_orig_mod", plain)
    return isinstance(plain, MILClassifier)


def unwrapped_mil(model: nn.Module) -> MILClassifier:
    """The :class:`MILClassifier` inside DDP / torch.compile wrappers."""
    plain = getattr(model, "module", model)
    return getattr(plain, "_orig_mod", plain)
