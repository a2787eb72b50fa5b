"""What a run leaves for users: the PEFT adapter, and the whole (merged) model in HF format with its processor.

Both take ``state_dict``, all of the LightningModule's weights gathered to rank 0, where its parameters hold
shards only (FSDP: ``trainer.strategy.lightning_module_state_dict()``).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import peft
import torch

from paligemma.data.processor_files import copy_processor_files
from paligemma.model import lora
from paligemma.model.quantize import dequantized_state_dict
from paligemma.training.distributed import clean_name

log = logging.getLogger(__name__)


def save_adapter(module, directory: str | Path, state_dict: dict | None = None) -> Path:
    """The PEFT adapter (adapter_config.json + adapter_model.safetensors) of a LoRA run; a gathered
    ``state_dict`` (FSDP) gives its weights."""
    module.network.peft_model.peft_config["default"].base_model_name_or_path = module.network.settings.path
    if state_dict is not None:
        state_dict = {
            name.removeprefix("net."): v
            for name, v in ((clean_name(k), v) for k, v in state_dict.items())
            if name in module.trainable_names
        }
    lora.save_adapter(module.network.peft_model, directory, state_dict)
    return Path(directory).resolve()


def save_model(module, directory: str | Path, state_dict: dict | None = None) -> Path:
    """The whole model in HF format with the base's processor files (from a local dir or the hub); LoRA runs
    merge (and unload) first. A gathered ``state_dict`` is loaded into a fresh copy of the model first.

    A quantized base (``model.quantization``) is dequantized first, into ``model.compute_dtype`` (bf16 in the 3B
    configs): the merged model is full precision, its frozen weights those the 4-bit (8-bit) ones stood for."""
    model, peft_model, quantization = module.net, module.network.peft_model, module.network.quantization
    dtype = module.net.dtype
    if quantization is not None:
        dtype = quantization.compute_dtype
        state_dict = {f"net.{k}": v for k, v in dequantized_state_dict(module.net, dtype).items()}
        log.info("merging the adapter into the %s base dequantized to %s", quantization.kind, dtype)
    if state_dict is not None:
        with torch.device("meta"):
            model = type(module.net)(module.net.config)  # the family's class, as loaded
        model = model.to(dtype).to_empty(device="cpu")
        model.tie_weights()
        if peft_model is not None:
            config = copy.deepcopy(peft_model.peft_config["default"])
            config.base_model_name_or_path = None  # get_peft_model sets it (and warns when it changes)
            peft_model = peft.get_peft_model(model, config)
        model.load_state_dict(
            {k.removeprefix("net."): v for k, v in state_dict.items() if k.startswith("net.")}
        )
    model = model if peft_model is None else peft_model.merge_and_unload()
    model.save_pretrained(directory)
    copy_processor_files(module.network.settings.path, directory)
    return Path(directory).resolve()
