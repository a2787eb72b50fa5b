"""Gemma 4 (image and text): its vision tower's soft tokens, normed and projected (``Gemma4MultimodalEmbedder``),
placed at the image tokens of a Gemma 4 decoder with per-layer embeddings.

It runs the code every family shares (paligemma/model/vision_language.py: forward, loss, prefill and decode steps,
greedy and beam generation, checkpoint I/O) and names its hooks, as transformers' Gemma4Model computes them:

- images come as patch rows with their (x, y) positions (``image_position_ids``, (-1, -1) on padding); each gives
  as many soft tokens as its real patches over k^2, flat, image after image, written over the image tokens in order;
- image tokens are embedded as the pad id (the image token may lie outside the vocabulary) before the soft tokens
  are written over them, and the per-layer embeddings read the pad id there too (their projection part reads the
  embeddings with the soft tokens in place);
- ``use_bidirectional_attention="vision"``: the tokens of each image (``mm_token_type_ids`` 1) attend to each
  other both ways on sliding layers only, within the window; full layers stay causal. Without
  ``mm_token_type_ids``, or with the setting None (transformers' default), every layer is causal;
- positions count from 0; the LM head is soft-capped by ``final_logit_softcapping``.

Audio and video inputs are refused. Module paths mirror transformers' Gemma4ForConditionalGeneration except the
projector's (``model.embed_vision`` there, ``model.multi_modal_projector`` here: weights.py maps the two).
"""

from __future__ import annotations

import torch

from paligemma.model.gemma import ModelOutput, attention_mask_4d
from paligemma.model.gemma3 import windowed_spans_mask_4d
from paligemma.model.gemma4_config import Gemma4Config
from paligemma.model.gemma4_decoder import Gemma4TextModel
from paligemma.model.gemma4_vision import Gemma4MultimodalEmbedder, Gemma4VisionModel
from paligemma.model.vision_language import VisionLanguageBackbone, VisionLanguageModel

# Gemma4ForConditionalGeneration's keys, ours -> transformers 5's (what save_pretrained writes).
GEMMA4_SAVE_PREFIXES = [
    ("model.vision_tower.", "model.vision_tower."),
    ("model.multi_modal_projector.", "model.embed_vision."),
    ("model.language_model.", "model.language_model."),
]


def sliding_spans_mask_4d(
    valid_kv: torch.Tensor,
    q_positions: torch.Tensor,
    spans_kv: torch.Tensor | None = None,
    window: int | None = None,
    segment_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gemma 4's masks: on sliding layers (a ``window``) Gemma 3's (causal or same image, within the window, no
    pad); on full layers causal, the spans ignored (transformers' ``create_masks_for_vision_model``)."""
    if window is None or spans_kv is None:
        return attention_mask_4d(valid_kv, q_positions, None, window, segment_ids)
    return windowed_spans_mask_4d(valid_kv, q_positions, spans_kv, window, segment_ids)


def vision_blocks(mm_token_type_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) long: k > 0 on the tokens of a row's k-th run of image (1) or video (2) tokens, 0 elsewhere."""
    is_vision = (mm_token_type_ids == 1) | (mm_token_type_ids == 2)
    starts = is_vision & ~torch.nn.functional.pad(is_vision, (1, 0))[:, :-1]
    return torch.where(is_vision, starts.long().cumsum(-1), 0)


class Gemma4Model(VisionLanguageBackbone):
    """Gemma 4's vision tower, its projector and decoder, without the LM head."""

    vision_class = Gemma4VisionModel
    projector_class = Gemma4MultimodalEmbedder
    decoder_class = Gemma4TextModel
    spans_mask_4d = staticmethod(sliding_spans_mask_4d)
    config: Gemma4Config
    language_model: Gemma4TextModel

    def image_features(
        self, pixel_values: torch.Tensor, image_position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, P, 3 p^2) patch rows, (B, P, 2) positions -> (S, text hidden) soft tokens of every image, flat."""
        if image_position_ids is None:
            raise ValueError(
                "Gemma 4 needs image_position_ids with pixel_values (Gemma4Processor returns both)"
            )
        return self.multi_modal_projector(self.vision_tower(pixel_values, image_position_ids))

    def text_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids`` with the image tokens as the pad id (what the embeddings read there)."""
        is_image = input_ids == self.config.image_token_index
        return torch.where(is_image, self.config.text_config.pad_token_id, input_ids)

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | None) -> torch.Tensor:
        """Scaled text embeddings (image tokens as the pad id) with the (S, D) soft tokens written over the image
        tokens in order."""
        embeds = self.language_model.embed(self.text_ids(input_ids))
        image_mask = input_ids == self.config.image_token_index
        n_tokens = int(image_mask.sum())
        n_features = 0 if image_features is None else image_features.shape[0]
        if n_tokens != n_features:
            raise ValueError(
                f"input_ids hold {n_tokens} image tokens (id {self.config.image_token_index}) but the images give "
                f"{n_features} soft tokens; each image needs as many image tokens as its soft tokens (the "
                "processor places them)"
            )
        if image_features is None:
            return embeds
        return embeds.masked_scatter(image_mask[..., None], image_features.to(embeds.dtype))

    def per_layer_inputs(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.per_layer_inputs(self.text_ids(input_ids), inputs_embeds)


class Gemma4ForConditionalGeneration(VisionLanguageModel):
    """Gemma 4 (E2B, E4B, 26B-A4B, 31B) on images and text, with every family's API and transformers' call:
    ``forward(input_ids, pixel_values, attention_mask, mm_token_type_ids, labels, image_position_ids)`` -> logits,
    loss; ``generate`` with the same inputs; ``from_pretrained`` / ``save_pretrained`` (transformers 5's layout)."""

    config_class = Gemma4Config
    model_class = Gemma4Model
    first_position = 0
    save_prefixes = GEMMA4_SAVE_PREFIXES
    config: Gemma4Config
    model: Gemma4Model

    def bidirectional_spans(self, input_ids, valid, token_type_ids=None, labels=None) -> torch.Tensor:
        """Each image one span where the text config says "vision" and ``mm_token_type_ids`` mark them (as
        transformers: without them every layer is causal); else none."""
        if self.config.text_config.use_bidirectional_attention != "vision" or token_type_ids is None:
            return torch.zeros_like(input_ids)
        return vision_blocks(token_type_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_logits: bool = True,
        segment_ids: torch.Tensor | None = None,
        decode_weights=None,
        image_position_ids: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        **unsupported,
    ) -> ModelOutput:
        """The shared forward; ``mm_token_type_ids`` (transformers' name) is ``token_type_ids``."""
        refuse_media(input_features, unsupported)
        return super().forward(
            input_ids,
            pixel_values,
            attention_mask,
            mm_token_type_ids if mm_token_type_ids is not None else token_type_ids,
            labels,
            position_ids,
            return_logits,
            segment_ids,
            decode_weights,
            image_position_ids,
        )

    def generate(
        self,
        input_ids,
        pixel_values=None,
        attention_mask=None,
        image_position_ids=None,
        mm_token_type_ids=None,
        input_features=None,
        **options,
    ) -> torch.Tensor:
        """New tokens only; ``options`` are those of paligemma.model.generation.generate."""
        refuse_media(input_features, {})
        if mm_token_type_ids is not None:
            options["token_type_ids"] = mm_token_type_ids
        return super().generate(
            input_ids, pixel_values, attention_mask, image_position_ids=image_position_ids, **options
        )


def refuse_media(input_features, unsupported: dict) -> None:
    if input_features is not None or unsupported.get("input_features_mask") is not None:
        raise NotImplementedError("Gemma 4's audio tower is not implemented: audio inputs are refused")
    if unsupported.get("pixel_values_videos") is not None:
        raise NotImplementedError("Gemma 4 video inputs are not implemented: pass frames as images")
    unknown = sorted(k for k, v in unsupported.items() if v is not None and k not in ("input_features_mask",))
    if unknown:
        raise TypeError(f"Gemma4ForConditionalGeneration.forward got unexpected inputs: {unknown}")
