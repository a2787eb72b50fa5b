"""Gemma 3: SigLIP patches -> average pool, RMSNorm and a matrix -> placed at the image tokens of a causal Gemma 3
decoder in which each image's tokens also attend to each other.

It is PaliGemma with another projector and another attention structure, so it shares PaliGemma's model code (forward,
loss, prefill and decode steps, greedy and beam generation, checkpoint I/O) and replaces three hooks: the projector,
the masks and the attention inputs. Module paths mirror transformers' Gemma3ForConditionalGeneration
(``model.vision_tower``, ``model.multi_modal_projector``, ``model.language_model``, ``lm_head``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from paligemma.model.decode_weights import DecodeWeights, product
from paligemma.model.gemma import GemmaRMSNorm, attention_mask_4d
from paligemma.model.gemma3_config import Gemma3Config
from paligemma.model.paligemma import (
    PaliGemmaForConditionalGeneration,
    PaliGemmaModel,
    pool_image_features,
    valid_counts,
)


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


def image_block_mask_4d(
    valid_kv: torch.Tensor,
    q_positions: torch.Tensor,
    blocks_kv: torch.Tensor,
    window: int | None = None,
    segment_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean mask (B, 1, T, L) as transformers composes Gemma 3's: (causal or same image) and window and not pad.

    blocks_kv: (B, L) from ``image_blocks``. A query sees the keys of its own image in both directions, earlier
    images and text causally, later images never. The window (sliding layers) bounds how far back a query sees
    (``l > t - window``, in slots), also inside an image; keys ahead in the same image stay visible.
    ``segment_ids``: packed rows, as in ``attention_mask_4d`` (an image's block lies in one row).
    """
    kv_idx = torch.arange(valid_kv.shape[1], device=valid_kv.device)
    blocks_q = blocks_kv[:, q_positions]  # (B, T)
    same_image = (blocks_q[:, :, None] == blocks_kv[:, None, :]) & (blocks_q[:, :, None] > 0)  # (B, T, L)
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


class Gemma3Model(PaliGemmaModel):
    """Vision tower, Gemma 3 projector and decoder, without the LM head."""

    projector_class = Gemma3MultiModalProjector

    def attention_masks(self, valid_kv, q_positions, blocks_kv, segment_ids=None) -> dict[str, torch.Tensor]:
        """``image_block_mask_4d`` per layer type; ``blocks_kv`` from ``Gemma3ForConditionalGeneration.attention_inputs``."""
        return self.language_model.attention_masks(
            valid_kv, q_positions, blocks_kv, segment_ids, mask_4d=image_block_mask_4d
        )


class Gemma3ForConditionalGeneration(PaliGemmaForConditionalGeneration):
    """Gemma 3 (4B, 12B, 27B; pt and it), with PaliGemma's API: ``forward(input_ids, pixel_values, attention_mask,
    token_type_ids, labels)`` -> logits, loss; ``generate``; ``from_pretrained`` / ``save_pretrained``.

    Images may sit anywhere in the text (each as a run of ``mm_tokens_per_image`` image tokens). The LM head is not
    soft-capped, whatever ``final_logit_softcapping`` says, as in transformers' Gemma3ForConditionalGeneration.
    """

    config_class = Gemma3Config
    model_class = Gemma3Model

    def __init__(self, config: Gemma3Config):
        super().__init__(config)  # pyright: ignore[reportArgumentType] -- PaliGemma's code reads the fields both configs have

    def attention_inputs(
        self, input_ids, attention_mask=None, token_type_ids=None, labels=None, segment_ids=None
    ):
        """(valid, blocks, position_ids), each (B, T): the attention mask (all ones without one), ``image_blocks``,
        and 0-indexed positions contiguous within each row (left padding shifts nothing), restarting at every
        segment of packed rows (``segment_ids``)."""
        valid = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        blocks = image_blocks(input_ids, token_type_ids, self.config.image_token_index)
        positions = (valid_counts(valid, segment_ids) - 1).clamp(min=0)
        return valid, blocks, positions

    def lm_logits(self, hidden: torch.Tensor, decode_weights: DecodeWeights | None = None) -> torch.Tensor:
        return product(self.lm_head, hidden, decode_weights)
