import pytest

from paligemma.lit_module import score, warmup_cosine


def test_warmup_then_cosine_to_floor():
    multiplier = warmup_cosine(total_steps=100, warmup_ratio=0.1, min_lr_ratio=0.1)
    assert multiplier(0) == pytest.approx(0.1) and multiplier(9) == pytest.approx(1.0)
    assert multiplier(10) == pytest.approx(1.0)
    assert multiplier(55) == pytest.approx(0.1 + 0.9 * 0.5)
    assert multiplier(100) == pytest.approx(0.1)
    assert all(multiplier(s) >= multiplier(s + 1) for s in range(10, 100))


def test_score_reports_vqa_accuracy_per_kind():
    records = [
        {"row_id": 0, "kind": "color", "prediction": "red", "references": ["red"]},
        {"row_id": 1, "kind": "color", "prediction": "blue", "references": ["red"]},
        {"row_id": 2, "kind": "count", "prediction": "two", "references": ["2"]},
    ]
    scores = score(records, "vqa")
    assert scores == {"val/vqa_accuracy/color": 0.5, "val/vqa_accuracy/count": 1.0, "val/vqa_accuracy": 2 / 3}


def test_score_reports_cider_and_bleu_for_captions():
    records = [
        {
            "row_id": 0,
            "kind": "caption",
            "prediction": "a red circle",
            "references": ["a red circle", "red circle"],
        },
        {"row_id": 1, "kind": "caption", "prediction": "a blue square", "references": ["a green triangle"]},
    ]
    scores = score(records, "caption")
    assert set(scores) == {"val/cider", "val/bleu4"} and scores["val/cider"] > 0


def test_trainable_projector_is_trained_and_saved_with_the_adapter(tiny_checkpoint, tmp_path):
    from safetensors import safe_open

    from paligemma.lit_module import PaliGemmaLitModule

    module = PaliGemmaLitModule(path=str(tiny_checkpoint), lora={"r": 4}, train_projector=True)
    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    assert any("multi_modal_projector" in name for name in trainable)
    assert not any("vision_tower" in name for name in trainable)
    with safe_open(module.save_adapter(tmp_path) / "adapter_model.safetensors", "pt") as f:
        assert any("multi_modal_projector" in key for key in f.keys())  # noqa: SIM118
    with pytest.raises(ValueError, match="train_vision=true needs lora=null"):
        PaliGemmaLitModule(path=str(tiny_checkpoint), lora={"r": 4}, train_vision=True)
