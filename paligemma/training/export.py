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
from safetensors.torch import save_file

from paligemma.data.processor import copy_processor_files
from paligemma.model import PaliGemmaForConditionalGeneration
from paligemma.model.quantize import dequantized_state_dict
from paligemma.training.distributed import clean_name

log = logging.getLogger(__name__)


def save_adapter(module, directory: str | Path, state_dict: dict | None = None) -> Path:
    """The PEFT adapter (adapter_config.json + adapter_model.safetensors) of a LoRA run.

    PEFT finds adapter weights by module names, which FSDP changes, so a gathered ``state_dict`` is written
    here in PEFT's format (tests compare the two)."""
    config = module.peft_model.peft_config["default"]
    config.base_model_name_or_path = str(module.hparams.path)
    if state_dict is None:
        module.peft_model.save_pretrained(directory)
        return Path(directory).resolve()
    adapter = {  # net.model.<...>.q_proj.lora_A.default.weight -> base_model.model.model.<...>.q_proj.lora_A.weight
        "base_model.model." + k.removeprefix("net.").replace(".default.", "."): v.contiguous()
        for k, v in ((clean_name(k), v) for k, v in state_dict.items())
        if k in module.trainable_names and "lora_" in k
    }
    Path(directory).mkdir(parents=True, exist_ok=True)
    save_file(adapter, Path(directory) / "adapter_model.safetensors", metadata={"format": "pt"})
    saved = copy.deepcopy(config)
    saved.inference_mode = True  # as PeftModel.save_pretrained writes it
    base = {"base_model_class": type(module.net).__name__, "parent_library": type(module.net).__module__}
    saved.save_pretrained(directory, auto_mapping_dict=base if saved.task_type is None else None)
    return Path(directory).resolve()


def save_model(module, directory: str | Path, state_dict: dict | None = None) -> Path:
    """The whole model in HF format with the base's processor files (from a local dir or the hub); LoRA runs
    merge (and unload) first. A gathered ``state_dict`` is loaded into a fresh copy of the model first.

    A quantized base (``model.quantization``) is dequantized first, into ``model.compute_dtype`` (bf16 in the 3B
    configs): the merged model is full precision, its frozen weights those the 4-bit (8-bit) ones stood for."""
    model, peft_model = module.net, module.peft_model
    dtype = module.net.dtype
    if module.quantization is not None:
        dtype = module.quantization.compute_dtype
        state_dict = {f"net.{k}": v for k, v in dequantized_state_dict(module.net, dtype).items()}
        log.info("merging the adapter into the %s base dequantized to %s", module.quantization.kind, dtype)
    if state_dict is not None:
        with torch.device("meta"):
            model = PaliGemmaForConditionalGeneration(module.net.config)
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
    copy_processor_files(module.hparams.path, directory)
    return Path(directory).resolve()
