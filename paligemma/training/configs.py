"""The typed settings of each layer as Hydra structured configs: the schemas, and the defaults, of ``conf/``.

``conf/config.yaml`` places ``optim_settings`` at ``optim``, ``lora_settings`` at ``lora`` and
``generation_settings`` at ``generation``; each file of ``conf/model/`` starts from ``model_settings`` and each of
``conf/data/`` from ``data_settings``. A YAML file then sets only what differs from these dataclasses,
and a misspelt or mistyped override (``lora.rr=3``, ``optim.lr=abc``) fails naming the key.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from paligemma.data.settings import DataSettings
from paligemma.model.build import ModelSettings
from paligemma.model.lora import LoraSettings
from paligemma.training.optim import OptimSettings
from paligemma.training.scoring import GenerationSettings


def register_configs() -> None:
    """Store the schemas under the names conf/ refers to (the entry scripts call this before composing)."""
    store = ConfigStore.instance()
    store.store(name="optim_settings", node=OptimSettings)
    store.store(name="lora_settings", node=LoraSettings)
    store.store(name="data_settings", node=DataSettings)
    store.store(name="model_settings", node=ModelSettings)
    store.store(name="generation_settings", node=GenerationSettings)
