import torch

from paligemma import PaliGemmaConfig
from paligemma.model.feature_cache import ImageFeatureCache
from paligemma.tiny import random_batch
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
    cache = model.model.feature_cache = ImageFeatureCache()
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
        cache = model.model.feature_cache = ImageFeatureCache(
            max_bytes=expected[0].numel() * expected.element_size()
        )
        for _ in range(2):
            assert torch.equal(model.model.image_features(batch["pixel_values"]), expected)
    assert len(cache.features) == 1 and cache.hits == 1
