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


def test_final_logit_softcap_switches_off(tiny_gemma2_checkpoint):
    import torch

    from paligemma.tiny import random_batch
    from paligemma.training.module import PaliGemmaLitModule

    capped = PaliGemmaLitModule(path=str(tiny_gemma2_checkpoint), lora=None).net
    plain = PaliGemmaLitModule(path=str(tiny_gemma2_checkpoint), lora=None, final_logit_softcap=False).net
    cap = capped.config.text_config.final_logit_softcapping
    assert cap == 30.0 and plain.config.text_config.final_logit_softcapping is None
    batch = random_batch(capped.config, prefix_lens=[3], suffix_lens=[2])
    with torch.no_grad():
        capped_logits, plain_logits = capped(**batch).logits, plain(**batch).logits
    torch.testing.assert_close(capped_logits, torch.tanh(plain_logits / cap) * cap)
    assert not torch.equal(capped_logits, plain_logits)
