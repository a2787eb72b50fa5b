"""A run from its checked settings: the data module and the LightningModule, built one way for train.py, evaluate.py
and a resumed or evaluated checkpoint.

The config goes down the layers once: ``training.checks.run_settings`` types and checks it into ``RunSettings``
(each settings class checks its own fields), then ``build_datamodule`` and ``build_module`` build from those. A
checkpoint saves the run's composed config; ``use_saved_network`` puts back the settings that built its network, so
that evaluating it builds the same one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from paligemma.data.settings import DataSettings
from paligemma.model.build import ModelSettings, build_model
from paligemma.model.lora import LoraSettings
from paligemma.training.optim import OptimSettings
from paligemma.training.scoring import GenerationSettings, Metric

if TYPE_CHECKING:
    from paligemma.data.datamodule import PaliGemmaDataModule
    from paligemma.training.module import PaliGemmaLitModule


@dataclass(frozen=True)
class RunSettings:
    """A train.py / evaluate.py config, typed and checked. ``lora=None``: no new LoRA weights (the decoder trains
    fully, or ``model.adapter`` is loaded frozen). ``bf16_refused_by``: what in the run cannot take a bf16 base, so
    that ``model.dtype=auto`` picks float32 (``checks.bf16_refusal``)."""

    model: ModelSettings
    lora: LoraSettings | None
    optim: OptimSettings
    generation: GenerationSettings
    data: DataSettings
    metric: Metric
    bf16_refused_by: str | None = None


def build_datamodule(settings: RunSettings) -> PaliGemmaDataModule:
    from paligemma.data.datamodule import PaliGemmaDataModule

    return PaliGemmaDataModule(settings.data)


def build_module(
    settings: RunSettings, datamodule: PaliGemmaDataModule, run_config: dict[str, Any] | None = None
) -> PaliGemmaLitModule:
    """The network ``build_model`` makes of the settings, handed to the LightningModule with the data's processor.
    ``run_config``: the composed config, which checkpoints save (``saved_network`` reads it back)."""
    from paligemma.training.module import PaliGemmaLitModule

    network = build_model(settings.model, settings.lora, settings.bf16_refused_by)
    return PaliGemmaLitModule(
        network,
        datamodule.processor,
        optim=settings.optim,
        generation=settings.generation,
        metric=settings.metric,
        run_config=run_config,
    )


def saved_network(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The ``model`` and ``lora`` config nodes that built a checkpoint's network. Checkpoints written before the
    network was injected hold the fields of ``ModelSettings`` and ``lora`` at the top of their hyper-parameters."""
    hparams = checkpoint.get("hyper_parameters") or {}
    if hparams.get("config"):
        return {"model": hparams["config"]["model"], "lora": hparams["config"].get("lora")}
    model_fields = {f.name for f in fields(ModelSettings)}
    return {"model": {k: v for k, v in hparams.items() if k in model_fields}, "lora": hparams.get("lora")}


def use_saved_network(cfg: DictConfig, checkpoint: dict[str, Any]) -> None:
    """Set ``cfg``'s ``model`` and ``lora`` to those that built the checkpoint's network, so that what the config
    takes from the model (``data.processor_path``, ``data.chat_template``) follows them too."""
    network = saved_network(checkpoint)
    OmegaConf.update(cfg, "model", network["model"], merge=True)
    with open_dict(cfg):
        cfg.lora = network["lora"]
