"""What every family runs (paligemma/model/families.py): the backbone that places projected image features at the
image tokens of a Gemma decoder, and the model around it (forward and loss, prefill and decode steps, greedy and beam
generation, checkpoint I/O). A family's subclasses name their hooks: PaliGemma's in paligemma.py, Gemma 3's in
gemma3.py.

Module paths mirror transformers' ``*ForConditionalGeneration`` (``model.vision_tower``,
``model.multi_modal_projector``, ``model.language_model``, ``lm_head``), so state dicts and PEFT adapters move
between the two unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from math import isqrt
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from paligemma.model import generation, weights
from paligemma.model.attention import softcap
from paligemma.model.config import VisionLanguageConfig
from paligemma.model.decode_state import DecodeState
from paligemma.model.decode_weights import DecodeWeights, product
from paligemma.model.feature_cache import ImageFeatureCache
from paligemma.model.gemma import GemmaModel, KVCache, ModelOutput, causal_lm_loss

if TYPE_CHECKING:
    from paligemma.model.weights import ModelT


def token_positions(
    valid: torch.Tensor, segment_ids: torch.Tensor | None = None, first: int = 0
) -> torch.Tensor:
    """(B, T) long position ids: ``first`` at a row's first real token, one more at each real token after, so left
    padding shifts nothing (a pad takes its last real token's, ``first`` before any); with ``segment_ids`` (B, T)
    (packed rows, see paligemma/data/packing.py) they restart at every segment."""
    counts = valid.long().cumsum(-1)  # real tokens up to each position, the position included
    if segment_ids is not None:
        starts = segment_ids != F.pad(segment_ids, (1, 0), value=-1)[:, :-1]  # first token of each segment
        counts = counts - torch.where(starts, counts - valid, 0).cummax(-1).values  # minus those before it
    return (counts - 1).clamp(min=0) + first


def pool_image_features(features: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    """(N, P, D) features of each image's square patch grid, average-pooled to (N, tokens_per_image, D): a
    prompt that holds fewer image tokens per image than the tower has patches (``data.frame_token_pool``)."""
    N, P, D = features.shape
    side, pooled_side = isqrt(P), isqrt(tokens_per_image)
    if pooled_side**2 != tokens_per_image or side % pooled_side:
        raise ValueError(
            f"{tokens_per_image} image tokens per image cannot pool a {side}x{side} patch grid: "
            f"a prompt holds a square number of them, whose side divides {side}"
        )
    grid = features.transpose(1, 2).reshape(N, D, side, side)  # patches are row-major
    return F.avg_pool2d(grid, side // pooled_side).flatten(2).transpose(1, 2)  # (N, tokens_per_image, D)


class VisionLanguageBackbone(nn.Module):
    """Vision tower, projector and decoder, without the LM head: what every family's backbone runs. A family's
    subclass names its modules (``vision_class``, ``projector_class``, ``decoder_class``) and the mask rule of its
    spans (``spans_mask_4d``: ``attention_mask_4d`` or a function of its arguments, as a staticmethod)."""

    vision_class: type[nn.Module]
    projector_class: type[nn.Module]
    decoder_class: type[GemmaModel]
    spans_mask_4d: Callable[..., torch.Tensor]

    def __init__(self, config: VisionLanguageConfig):
        super().__init__()
        self.config = config
        self.vision_tower = self.vision_class(config.vision_config)
        self.multi_modal_projector = self.projector_class(config)
        self.language_model = self.decoder_class(config.text_config)
        self.feature_cache: ImageFeatureCache | None = None  # frozen towers: features of images seen before

    def image_features(
        self, pixel_values: torch.Tensor, image_position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_image_tokens, text hidden); projected, not scaled. ``image_position_ids``: the
        patch positions of families whose images come as patch rows (Gemma 4); none here."""
        if image_position_ids is not None:
            raise ValueError(f"{type(self).__name__} takes no image_position_ids: its images are square")
        if self.feature_cache is not None:
            return self.feature_cache(pixel_values, self.project_images)
        return self.project_images(pixel_values)

    def project_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.multi_modal_projector(self.vision_tower(pixel_values))

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | None) -> torch.Tensor:
        """Scaled text embeddings with the image features written over the image tokens; features of images whose
        prompt holds fewer tokens per image than they have patches are pooled to that many first."""
        embeds = self.language_model.embed(input_ids)  # (B, T, D)
        image_mask = input_ids == self.config.image_token_index
        n_tokens = int(image_mask.sum())
        if image_features is not None and 0 < n_tokens < image_features.shape[0] * image_features.shape[1]:
            n_images = image_features.shape[0]
            if n_tokens % n_images == 0:  # else the count is wrong, not pooled: the error below says so
                image_features = pool_image_features(image_features, n_tokens // n_images)
        n_features = 0 if image_features is None else image_features.shape[0] * image_features.shape[1]
        if n_tokens != n_features:
            n_images = 0 if image_features is None else image_features.shape[0]
            raise ValueError(
                f"input_ids hold {n_tokens} image tokens (id {self.config.image_token_index}) but "
                f"{n_images} image(s) give {n_features} features; each image needs "
                f"{self.config.num_image_tokens} image tokens in the prompt (the processor places them)"
            )
        if image_features is None:
            return embeds
        return embeds.masked_scatter(image_mask[..., None], image_features.to(embeds.dtype))

    def per_layer_inputs(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor) -> torch.Tensor | None:
        """What the decoder's layers read of the tokens beside the embeddings (Gemma 4's per-layer embeddings,
        ``per_layer_inputs=`` of the decoder's ``forward`` and ``run_layers``); None: nothing (this base)."""
        return None

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        spans: torch.Tensor,
        position_ids: torch.Tensor,
        kv_caches: list[KVCache] | None = None,
        outputs_from: int = 0,
        segment_ids: torch.Tensor | None = None,
        decode_weights: DecodeWeights | None = None,
        per_layer_inputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the decoder on (B, T, D) embeddings that continue the cache (if any); returns the hidden states
        of positions ``outputs_from`` on. ``spans``: the bidirectional spans (``same_span``); ``segment_ids``: see
        ``attention_mask_4d``; ``per_layer_inputs``: ``per_layer_inputs``'s."""
        start = kv_caches[0].size if kv_caches else 0
        q_positions = torch.arange(start, start + inputs_embeds.shape[1], device=inputs_embeds.device)
        masks = self.attention_masks(attention_mask, q_positions, spans, segment_ids)
        return self.language_model(
            inputs_embeds, position_ids, masks, kv_caches, outputs_from, decode_weights, per_layer_inputs
        )

    def attention_masks(self, valid_kv, q_positions, spans_kv, segment_ids=None) -> dict[str, torch.Tensor]:
        """The decoder's (B, 1, T, L) masks per layer type by ``spans_mask_4d`` (``spans_kv`` from
        ``VisionLanguageModel.attention_inputs``), within each segment of packed rows."""
        return self.language_model.attention_masks(
            valid_kv, q_positions, spans_kv, segment_ids, mask_4d=self.spans_mask_4d
        )


class VisionLanguageModel(nn.Module, ABC):
    """The code every family runs (forward and loss, prefill and decode steps, generation, checkpoint I/O). A
    family's subclass names its config class (``config_class``, what from_pretrained reads config.json as), its
    backbone (``model_class``), the first position of a row (``first_position``) and its bidirectional spans
    (``bidirectional_spans``); the LM head's soft-cap is its config's ``logit_softcap``."""

    config_class: type[VisionLanguageConfig]
    model_class: type[VisionLanguageBackbone]
    first_position: int
    save_prefixes: list[tuple[str, str]] = (
        weights.SAVE_PREFIXES
    )  # our key prefix -> the one save_pretrained writes

    def __init__(self, config: VisionLanguageConfig):
        super().__init__()
        self.config = config
        self.model = self.model_class(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        self.lm_head.weight = self.model.language_model.embed_tokens.weight

    def attention_inputs(
        self, input_ids, attention_mask=None, token_type_ids=None, labels=None, segment_ids=None
    ):
        """(valid, spans, position_ids), each (B, T): the attention mask (all ones without one), the
        ``bidirectional_spans``, and ``token_positions`` from ``first_position``, restarting at every segment of
        packed rows (``segment_ids``)."""
        valid = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        spans = self.bidirectional_spans(input_ids, valid, token_type_ids, labels)
        return valid, spans, token_positions(valid, segment_ids, self.first_position)

    @abstractmethod
    def bidirectional_spans(self, input_ids, valid, token_type_ids=None, labels=None) -> torch.Tensor:
        """(B, T) long: k > 0 on the tokens of a row's k-th bidirectional span, 0 on causal ones."""

    def lm_logits(self, hidden: torch.Tensor, decode_weights: DecodeWeights | None = None) -> torch.Tensor:
        """The tied LM head, soft-capped by the config's ``logit_softcap`` (PaliGemma 2: 30; None: off)."""
        return softcap(product(self.lm_head, hidden, decode_weights), self.config.logit_softcap)

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.vision_tower

    @property
    def language_model(self) -> GemmaModel:
        return self.model.language_model

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

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
        decode_weights: DecodeWeights | None = None,
        image_position_ids: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Logits for every position and, given labels, the mean loss over labels != -100.

        The mask's spans and the positions come from ``attention_inputs``. ``return_logits=False`` computes the
        head only where the loss needs it (saves B*T*V memory). ``segment_ids`` (B, T): packed rows, each segment one
        prompt + target that attends only within itself, its positions restarting. ``decode_weights``: the
        products run on them, gradients off (validation's loss: paligemma/model/decode_weights.py).
        ``image_position_ids``: the patch positions of families whose images come as patch rows (Gemma 4).
        """
        valid, spans, positions = self.attention_inputs(
            input_ids, attention_mask, token_type_ids, labels, segment_ids
        )
        positions = positions if position_ids is None else position_ids
        features = self._image_features(pixel_values, image_position_ids)
        start = 0 if return_logits or labels is None else self._first_predicting(labels)
        embeds = self.model.embed(input_ids, features)
        hidden = self.model(
            embeds,
            valid,
            spans,
            positions,
            outputs_from=start,
            segment_ids=segment_ids,
            decode_weights=decode_weights,
            per_layer_inputs=self.model.per_layer_inputs(input_ids, embeds),
        )
        logits = self.lm_logits(hidden, decode_weights) if return_logits else None
        loss = None
        if labels is not None:
            loss = self._loss(hidden, logits, labels, start, decode_weights)
        return ModelOutput(logits=logits, loss=loss)

    def _image_features(self, pixel_values, image_position_ids=None) -> torch.Tensor | None:
        if pixel_values is None:
            return None
        if image_position_ids is None:  # the families with square images take no second argument
            return self.model.image_features(pixel_values)
        return self.model.image_features(pixel_values, image_position_ids)

    def _first_predicting(self, labels: torch.Tensor) -> int:
        """The first position whose next token is a label in some row: the loss reads no hidden state before
        it, so the last decoder layer computes none (its keys and values still cover every position)."""
        predicting = (labels[:, 1:] != self.config.ignore_index).any(0).nonzero()
        return int(predicting[0]) if len(predicting) else 0

    def _loss(self, hidden, logits, labels, start: int = 0, decode_weights=None) -> torch.Tensor:
        """``hidden`` holds positions ``start`` on."""
        if logits is not None:
            return causal_lm_loss(logits, labels, self.config.ignore_index)
        targets = labels[:, start + 1 :]
        keep = targets != self.config.ignore_index
        selected_logits = self.lm_logits(hidden[:, :-1][keep], decode_weights).float()  # (N, V)
        return nn.functional.cross_entropy(selected_logits, targets[keep])

    @torch.inference_mode()
    def prefill(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        max_new_tokens: int = 20,
        decode_weights: DecodeWeights | None = None,
        image_position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, DecodeState]:
        """Run a left-padded prompt batch once: (B, V) next-token logits and the state for ``decode_step``,
        with caches and masks allocated for ``max_new_tokens`` more tokens. ``decode_weights``: the decoder's
        and LM head's products run on them (paligemma/model/decode_weights.py); None: the plain products."""
        valid, spans, positions = self.attention_inputs(input_ids, attention_mask, token_type_ids)
        if not bool(valid[:, -1].all()):
            raise ValueError(
                "generation needs left-padded prompts: use the processor with padding_side='left'"
            )
        B, total = input_ids.shape[0], input_ids.shape[1] + max_new_tokens
        caches = self.language_model.make_kv_caches(B, total, self.dtype, input_ids.device)
        features = self._image_features(pixel_values, image_position_ids)
        embeds = self.model.embed(input_ids, features)
        per_layer = self.model.per_layer_inputs(input_ids, embeds)
        hidden = self.model(
            embeds, valid, spans, positions, caches, decode_weights=decode_weights, per_layer_inputs=per_layer
        )
        state = self._decode_state(valid, spans, positions, caches, embeds, max_new_tokens)
        return self.lm_logits(hidden[:, -1], decode_weights), state

    def _decode_state(self, valid, spans, positions, caches, embeds, max_new_tokens: int) -> DecodeState:
        """The masks and rotary angles of every step a generation call may take, made once."""
        P = valid.shape[1]
        steps = torch.arange(1, max_new_tokens + 1, device=valid.device)
        new_positions = positions[:, -1:] + steps  # (B, max_new_tokens)
        cos, sin = self.language_model.rotary_emb(embeds, new_positions)
        masks = self.model.attention_masks(
            F.pad(valid, (0, max_new_tokens), value=1), P - 1 + steps, F.pad(spans, (0, max_new_tokens))
        )  # (B, 1, max_new_tokens, P + max_new_tokens) per layer type
        layer_types = self.config.text_config.layer_types
        cache_of = dict(zip(layer_types, caches, strict=True))  # the layers of a type share a kind of cache
        masks = {name: cache_of[name].slot_mask(mask, P - 1 + steps) for name, mask in masks.items()}
        return DecodeState(masks, cos, sin, caches, prompt_len=P, length=P)

    @torch.inference_mode()
    def decode_step(
        self, tokens: torch.Tensor, state: DecodeState, decode_weights: DecodeWeights | None = None
    ) -> torch.Tensor:
        """Feed (N,) tokens after what ``state`` holds; returns their (N, V) next-token logits. ``decode_weights``:
        as ``prefill``'s."""
        masks, cos, sin = state.advance()
        embeds = self.language_model.embed(tokens[:, None])  # (N, 1, D)
        per_layer = self.model.per_layer_inputs(tokens[:, None], embeds)
        hidden = self.language_model.run_layers(
            embeds, cos, sin, masks, state.caches, 0, decode_weights, per_layer_inputs=per_layer
        )
        return self.lm_logits(hidden[:, -1], decode_weights)

    def generate(self, input_ids, pixel_values=None, attention_mask=None, **options) -> torch.Tensor:
        """New tokens only, (B, <= max_new_tokens); ``options`` are those of paligemma.model.generation.generate."""
        return generation.generate(self, input_ids, pixel_values, attention_mask, **options)

    def gradient_checkpointing_enable(self) -> None:
        self.model.language_model.gradient_checkpointing = True

    @classmethod
    def from_pretrained(
        cls: type[ModelT],
        path: str | Path,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> ModelT:
        """Load an HF-format checkpoint (local dir or hub id) in any layout transformers has written."""
        return weights.load_pretrained(cls, path, dtype=dtype, device=device)

    def save_pretrained(self, path: str | Path, max_shard_bytes: int = 5 * 2**30) -> None:
        """Write config.json + safetensors in the hub layout (transformers loads it unchanged)."""
        weights.save_pretrained(self, path, max_shard_bytes=max_shard_bytes)
