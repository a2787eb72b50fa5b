import pytest
import torch

from paligemma import PaliGemmaConfig
from paligemma.errors import ConfigError
from paligemma.tiny import random_batch
from paligemma.training.feature_cache import attach_feature_cache
from tests.helpers import SMALL_CONFIGS, hf_reference, ours_from_hf


def model_and_batch():
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS["mqa"])
    model = ours_from_hf(hf_reference(config)).eval()
    return model, random_batch(config, [3, 5, 4], [2, 3, 1])


def test_cached_features_and_losses_equal_uncached_ones_and_repeat_images_skip_the_tower():
    model, batch = model_and_batch()
    with torch.no_grad():
        expected_features = model.model.image_features(batch["pixel_values"])
        expected_loss = model(**batch).loss
    cache = attach_feature_cache(model, train_vision=False, train_projector=False)
    tower_calls = []
    model.model.vision_tower.register_forward_hook(lambda *args: tower_calls.append(1))
    with torch.no_grad():
        assert torch.equal(model(**batch).loss, expected_loss)  # epoch 1: every image computed
        reordered = batch["pixel_values"][[2, 0, 0]]  # epoch 2: the same images, another order
        assert torch.equal(model.model.image_features(reordered), expected_features[[2, 0, 0]])
    assert (cache.misses, cache.hits, len(tower_calls)) == (3, 3, 1)


def test_a_full_cache_computes_what_it_cannot_store():
    model, batch = model_and_batch()
    with torch.no_grad():
        expected = model.model.image_features(batch["pixel_values"])
        cache = attach_feature_cache(model, train_vision=False, train_projector=False)
        cache.max_bytes = expected[0].numel() * expected.element_size()  # room for one image
        for _ in range(2):
            assert torch.equal(model.model.image_features(batch["pixel_values"]), expected)
    assert len(cache.features) == 1 and cache.hits == 1


@pytest.mark.parametrize("trained", ["train_vision", "train_projector"])
def test_trained_towers_refuse_the_cache(trained):
    model, _ = model_and_batch()
    with pytest.raises(ConfigError, match=f"model.{trained}=true"):
        attach_feature_cache(model, **{"train_vision": False, "train_projector": False, trained: True})
