import torch
import transformers

from paligemma.model.config import SiglipVisionConfig
from paligemma.model.siglip import SiglipVisionModel
from tests.helpers import randomize_


def test_vision_tower_matches_transformers():
    config = SiglipVisionConfig(hidden_size=40, intermediate_size=72, num_hidden_layers=3, num_attention_heads=5,
                                image_size=24, patch_size=6)  # fmt: skip
    hf_config = transformers.SiglipVisionConfig.from_dict(config.to_dict())
    hf_config._attn_implementation = "eager"
    hf = transformers.SiglipVisionModel(hf_config).eval()
    randomize_(hf)
    ours = SiglipVisionModel(config).eval()
    ours.load_state_dict(hf.state_dict())
    pixels = torch.randn(3, 3, 24, 24)
    with torch.no_grad():
        ref = hf(pixel_values=pixels).last_hidden_state
        out = ours(pixels)
    assert out.shape == (3, 16, 40)
    assert (ref - out).abs().max() < 1e-4


def test_features_do_not_depend_on_batch_neighbours():
    config = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                image_size=8, patch_size=4)  # fmt: skip
    model = SiglipVisionModel(config).eval()
    pixels = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(pixels)[:1], model(pixels[:1]))
