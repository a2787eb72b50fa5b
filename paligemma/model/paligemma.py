"""PaliGemma 1 and 2: SigLIP patches -> linear projector -> placed at the image tokens of a Gemma prefix-LM.

It runs the code every family shares (paligemma/model/vision_language.py) and names its hooks: its config, a linear
projector, the plain span mask, one bidirectional span (the prefix) and positions counted from 1. Module paths mirror
transformers' PaliGemmaForConditionalGeneration (``model.vision_tower``, ``model.multi_modal_projector``,
``model.language_model``, ``lm_head``).
"""

from __future__ import annotations

import torch
from torch import nn

from paligemma.model.config import PaliGemmaConfig, VisionLanguageConfig
from paligemma.model.gemma import GemmaModel, attention_mask_4d
from paligemma.model.siglip import SiglipVisionModel
from paligemma.model.vision_language import VisionLanguageBackbone, VisionLanguageModel


def prefix_span(
    input_ids: torch.Tensor,
    valid: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
) -> torch.Tensor:
    """(B, T) long: 1 on PaliGemma's prefix, the one bidirectional span of a prefix-LM (image + prompt), 0 after.

    The prefix is ``token_type_ids == 0``, else every token before the first label (``labels == ignore_index``),
    else every token; never a pad.
    """
    if token_type_ids is not None:
        prefix = token_type_ids == 0
    elif labels is not None:
        prefix = labels == ignore_index
    else:
        prefix = torch.ones_like(input_ids, dtype=torch.bool)
    return (prefix & valid.bool()).long()


class PaliGemmaMultiModalProjector(nn.Module):
    def __init__(self, config: VisionLanguageConfig):
        super().__init__()
        self.linear = nn.Linear(config.vision_config.hidden_size, config.text_config.hidden_size)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear(image_features)


class PaliGemmaModel(VisionLanguageBackbone):
    """SigLIP, the linear projector and Gemma 1 or 2, without the LM head; the prefix is one span."""

    vision_class = SiglipVisionModel
    projector_class = PaliGemmaMultiModalProjector
    decoder_class = GemmaModel
    spans_mask_4d = staticmethod(attention_mask_4d)


class PaliGemmaForConditionalGeneration(VisionLanguageModel):
    """PaliGemma 1 and 2: ``forward(input_ids, pixel_values, attention_mask, token_type_ids, labels)`` -> logits,
    loss; ``generate``; ``from_pretrained`` / ``save_pretrained``."""

    config_class = PaliGemmaConfig
    model_class = PaliGemmaModel
    first_position = 1  # PaliGemma counts positions from 1, as big_vision and transformers do

    def bidirectional_spans(self, input_ids, valid, token_type_ids=None, labels=None) -> torch.Tensor:
        """The prefix: ``prefix_span``."""
        return prefix_span(input_ids, valid, token_type_ids, labels, self.config.ignore_index)
