"""Gemma 3: SigLIP patches -> average pool, RMSNorm and a matrix -> placed at the image tokens of a causal Gemma 3
decoder in which each image's tokens also attend to each other.

It runs the code every family shares (paligemma/model/vision_language.py: forward, loss, prefill and decode steps,
greedy and beam generation, checkpoint I/O) and names its hooks: its config, its projector, its bidirectional spans
(each image one, windowed on sliding layers) and positions counted from 0; its config caps no logits. Module paths
mirror transformers' Gemma3ForConditionalGeneration (``model.vision_tower``, ``model.multi_modal_projector``,
``model.language_model``, ``lm_head``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from paligemma.model.gemma import GemmaModel, GemmaRMSNorm, attention_mask_4d, same_span
from paligemma.model.gemma3_config import Gemma3Config
from paligemma.model.siglip import SiglipVisionModel
from paligemma.model.vision_language import VisionLanguageBackbone, VisionLanguageModel, pool_image_features


def image_blocks(
    input_ids: torch.Tensor, token_type_ids: torch.Tensor | None, image_token_index: int
) -> torch.Tensor:
    """(B, T) long: k > 0 on the tokens of a row's k-th image (a run of image tokens), 0 on text.

    Image tokens are those with ``token_type_ids == 1`` (what Gemma3Processor returns), else those whose id is the
    image token (the same tokens, for the processor's output).
    """
    is_image = token_type_ids == 1 if token_type_ids is not None else input_ids == image_token_index
    starts = is_image & ~F.pad(is_image, (1, 0))[:, :-1]
    return torch.where(is_image, starts.long().cumsum(-1), 0)


def windowed_spans_mask_4d(
    valid_kv: torch.Tensor,
    q_positions: torch.Tensor,
    spans_kv: torch.Tensor,
    window: int | None = None,
    segment_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean mask (B, 1, T, L) as transformers composes Gemma 3's: (causal or same span) and window and not pad.

    spans_kv: (B, L) from ``image_blocks``. A query sees the keys of its own image in both directions, earlier
    images and text causally, later images never. The window (sliding layers) bounds how far back a query sees
    (``l > t - window``, in slots), also inside an image; keys ahead in the same image stay visible.
    ``segment_ids``: packed rows, as in ``attention_mask_4d`` (an image's block lies in one row).
    """
    kv_idx = torch.arange(valid_kv.shape[1], device=valid_kv.device)
    same_image = same_span(spans_kv, q_positions)  # (B, T, L)
    if window is not None:
        same_image = same_image & (kv_idx[None, :] > q_positions[:, None] - window)
    same_image = same_image & valid_kv[:, None, :].bool()
    return (
        attention_mask_4d(valid_kv, q_positions, window=window, segment_ids=segment_ids) | same_image[:, None]
    )


class Gemma3MultiModalProjector(nn.Module):
    """(B, patches, vision hidden) -> (B, mm_tokens_per_image, text hidden): the patch grid average-pooled, normed
    (``1 + w``, the tower's eps) and multiplied by a matrix, no bias."""

    def __init__(self, config: Gemma3Config):
        super().__init__()
        vision = config.vision_config
        self.mm_input_projection_weight = nn.Parameter(
            torch.zeros(vision.hidden_size, config.text_config.hidden_size)
        )
        self.mm_soft_emb_norm = GemmaRMSNorm(vision.hidden_size, eps=vision.layer_norm_eps)
        self.mm_tokens_per_image = config.mm_tokens_per_image

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        pooled = pool_image_features(patches, self.mm_tokens_per_image)  # (B, mm_tokens, D)
        return torch.matmul(self.mm_soft_emb_norm(pooled), self.mm_input_projection_weight).type_as(patches)


class Gemma3Model(VisionLanguageBackbone):
    """SigLIP, the Gemma 3 projector and decoder, without the LM head; each image one span, windowed."""

    vision_class = SiglipVisionModel
    projector_class = Gemma3MultiModalProjector
    decoder_class = GemmaModel
    spans_mask_4d = staticmethod(windowed_spans_mask_4d)


class Gemma3ForConditionalGeneration(VisionLanguageModel):
    """Gemma 3 (4B, 12B, 27B; pt and it), with every family's API: ``forward(input_ids, pixel_values, attention_mask,
    token_type_ids, labels)`` -> logits, loss; ``generate``; ``from_pretrained`` / ``save_pretrained``.

    Images may sit anywhere in the text (each as a run of ``mm_tokens_per_image`` image tokens).
    """

    config_class = Gemma3Config
    model_class = Gemma3Model
    first_position = 0  # Gemma 3 counts positions from 0
    config: Gemma3Config

    def bidirectional_spans(self, input_ids, valid, token_type_ids=None, labels=None) -> torch.Tensor:
        """Each image one span: ``image_blocks``."""
        return image_blocks(input_ids, token_type_ids, self.config.image_token_index)
