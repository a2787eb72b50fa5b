import pytest


def test_trainable_projector_is_trained_and_saved_with_the_adapter(tiny_checkpoint, tmp_path):
    from safetensors import safe_open

    from paligemma.training.export import save_adapter
    from paligemma.training.module import PaliGemmaLitModule

    module = PaliGemmaLitModule(path=str(tiny_checkpoint), lora={"r": 4}, train_projector=True)
    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    assert any("multi_modal_projector" in name for name in trainable)
    assert not any("vision_tower" in name for name in trainable)
    with safe_open(save_adapter(module, tmp_path) / "adapter_model.safetensors", "pt") as f:
        assert any("multi_modal_projector" in key for key in f.keys())  # noqa: SIM118
    with pytest.raises(ValueError, match="train_vision=true needs lora=null"):
        PaliGemmaLitModule(path=str(tiny_checkpoint), lora={"r": 4}, train_vision=True)
