"""Gemma 4 as a text-only causal LM (transformers' ``Gemma4ForCausalLM``): ``Gemma4TextModel`` and the tied LM
head, soft-capped by ``final_logit_softcapping``; forward and loss, and greedy decoding by prefill and decode steps
over the decoder's KV caches (shared layers reading their source layer's cache). The assembled image-text model
drives the same decoder through ``VisionLanguageBackbone``; this class is the decoder's reference user.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from paligemma.model.attention import softcap
from paligemma.model.decode_state import DecodeState
from paligemma.model.gemma import ModelOutput, causal_lm_loss
from paligemma.model.gemma4_config import Gemma4TextConfig
from paligemma.model.gemma4_decoder import Gemma4TextModel
from paligemma.model.vision_language import token_positions


class Gemma4ForCausalLM(nn.Module):
    def __init__(self, config: Gemma4TextConfig):
        super().__init__()
        self.config = config
        self.model = Gemma4TextModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.lm_head.weight = self.model.embed_tokens.weight

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return softcap(self.lm_head(hidden), self.config.logit_softcap)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Causal logits of every position (positions count real tokens: left padding shifts none) and, given
        labels, the mean next-token loss over labels != -100. No caches: shared layers read their source layer's
        keys and values of this call (``GemmaModel.call_kv_caches``)."""
        valid = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        positions = token_positions(valid) if position_ids is None else position_ids
        masks = self.model.attention_masks(valid, torch.arange(input_ids.shape[1], device=input_ids.device))
        embeds = self.model.embed(input_ids)
        per_layer = self.model.per_layer_inputs(input_ids, embeds)
        hidden = self.model(embeds, positions, masks, per_layer_inputs=per_layer)
        logits = self.lm_logits(hidden)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return ModelOutput(logits=logits, loss=loss)

    @torch.inference_mode()
    def prefill(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_new_tokens: int = 20
    ) -> tuple[torch.Tensor, DecodeState]:
        """A left-padded prompt batch once, into fresh KV caches: its (B, V) next-token logits and the state of
        ``decode_step`` (masks and rotary angles of every step made once, as VisionLanguageModel's)."""
        valid = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        if not bool(valid[:, -1].all()):
            raise ValueError("generation needs left-padded prompts, each ending with a real token")
        B, P = input_ids.shape
        positions = token_positions(valid)
        weight = self.lm_head.weight
        caches = self.model.make_kv_caches(B, P + max_new_tokens, weight.dtype, input_ids.device)
        masks = self.model.attention_masks(valid, torch.arange(P, device=input_ids.device))
        embeds = self.model.embed(input_ids)
        per_layer = self.model.per_layer_inputs(input_ids, embeds)
        hidden = self.model(embeds, positions, masks, caches, per_layer_inputs=per_layer)
        steps = torch.arange(1, max_new_tokens + 1, device=input_ids.device)
        cos, sin = self.model.rotary_emb(embeds, positions[:, -1:] + steps)
        step_masks = self.model.attention_masks(F.pad(valid, (0, max_new_tokens), value=1), P - 1 + steps)
        cache_of = dict(zip(self.config.layer_types, caches, strict=True))
        step_masks = {
            name: cache_of[name].slot_mask(mask, P - 1 + steps) for name, mask in step_masks.items()
        }
        state = DecodeState(step_masks, cos, sin, caches, prompt_len=P, length=P)
        return self.lm_logits(hidden[:, -1]), state

    @torch.inference_mode()
    def decode_step(self, tokens: torch.Tensor, state: DecodeState) -> torch.Tensor:
        """Feed (N,) tokens after what ``state`` holds; their (N, V) next-token logits."""
        masks, cos, sin = state.advance()
        embeds = self.model.embed(tokens[:, None])
        per_layer = self.model.per_layer_inputs(tokens[:, None], embeds)
        hidden = self.model.run_layers(embeds, cos, sin, masks, state.caches, per_layer_inputs=per_layer)
        return self.lm_logits(hidden[:, -1])

    @torch.inference_mode()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_new_tokens: int = 20
    ) -> torch.Tensor:
        """Greedy: (B, max_new_tokens) new tokens, every step taken (no stop ids)."""
        logits, state = self.prefill(input_ids, attention_mask, max_new_tokens)
        tokens = [logits.argmax(-1)]
        for _ in range(max_new_tokens - 1):
            tokens.append(self.decode_step(tokens[-1], state).argmax(-1))
        return torch.stack(tokens, dim=1)
