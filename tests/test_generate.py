import pytest
import torch
from conftest import SMALL_CONFIGS, hf_reference, make_batch, ours_from_hf

from paligemma import PaliGemmaConfig
from paligemma.generate import sample_next


def prompt_batch(config, prefix_lens, seed=0):
    batch = make_batch(config, prefix_lens, [0] * len(prefix_lens), seed=seed, padding_side="left")
    batch.pop("labels")
    return batch


def hf_new_tokens(hf, batch, **kwargs):
    with torch.no_grad():
        out = hf.generate(**batch, do_sample=False, pad_token_id=0, **kwargs)
    return out[:, batch["input_ids"].shape[1] :]


@pytest.mark.parametrize("prefix_lens", [[6], [3, 7, 5]], ids=["single", "left-padded-batch"])
def test_greedy_matches_transformers(small_config, prefix_lens):
    hf = hf_reference(small_config)
    ours = ours_from_hf(hf)
    batch = prompt_batch(small_config, prefix_lens)
    eos = small_config.text_config.eos_token_id
    expected = hf_new_tokens(hf, batch, max_new_tokens=12, eos_token_id=eos)
    assert torch.equal(ours.generate(**batch, max_new_tokens=12), expected)


def test_stops_at_eos_and_pads_finished_rows():
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS["mqa"])
    hf = hf_reference(config)
    ours = ours_from_hf(hf)
    batch = prompt_batch(config, [3, 7, 5])
    free_run = ours.generate(**batch, max_new_tokens=10)
    stop = int(free_run[1, 2])  # the third token of row 1 becomes the stop id
    stopped = ours.generate(**batch, max_new_tokens=10, eos_token_id=stop)
    assert torch.equal(stopped, hf_new_tokens(hf, batch, max_new_tokens=10, eos_token_id=stop))
    first_stop = int((stopped[1] == stop).nonzero()[0])
    assert (stopped[1, first_stop + 1 :] == config.text_config.pad_token_id).all()


def test_all_rows_finished_ends_early():
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS["mha"])
    ours = ours_from_hf(hf_reference(config))
    batch = prompt_batch(config, [4])
    first = int(ours.generate(**batch, max_new_tokens=1)[0, 0])
    assert ours.generate(**batch, max_new_tokens=10, eos_token_id=[first, 3]).shape == (1, 1)


def test_cached_generation_equals_full_recompute():
    """Each greedy token equals the argmax of a full forward over prompt + tokens so far."""
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS["gqa"])
    model = ours_from_hf(hf_reference(config))
    batch = prompt_batch(config, [2, 6])
    new = model.generate(**batch, max_new_tokens=6, eos_token_id=[])
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    for step in range(new.shape[1]):
        grown = torch.cat([ids, new[:, :step]], 1)
        with torch.no_grad():
            logits = model(
                input_ids=grown,
                pixel_values=batch["pixel_values"],
                attention_mask=torch.cat([mask, torch.ones_like(new[:, :step])], 1),
                token_type_ids=torch.cat([types, torch.ones_like(new[:, :step])], 1),
            ).logits
        assert torch.equal(logits[:, -1].argmax(-1), new[:, step])


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS["mqa"])
    model = ours_from_hf(hf_reference(config))
    batch = prompt_batch(config, [3, 5])
    kwargs = dict(max_new_tokens=8, do_sample=True, temperature=1.5, eos_token_id=[])
    a = model.generate(**batch, seed=1, **kwargs)
    assert torch.equal(a, model.generate(**batch, seed=1, **kwargs))
    assert not torch.equal(a, model.generate(**batch, seed=2, **kwargs))
    greedy = model.generate(**batch, max_new_tokens=8, eos_token_id=[])
    assert torch.equal(model.generate(**batch, seed=3, top_k=1, **kwargs), greedy)


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, True, top_p=0.7, generator=gen)) for _ in range(200)}
    assert draws == {0, 1}


def test_right_padded_prompts_are_refused():
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS["mqa"])
    model = ours_from_hf(hf_reference(config))
    batch = make_batch(config, [2, 5], [0, 0])
    batch.pop("labels")
    with pytest.raises(ValueError, match="left-padded"):
        model.generate(**batch)


def test_command_line_generates_for_one_image(tiny_checkpoint, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from paligemma import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    image_path = tmp_path / "picture.png"
    Image.new("RGB", (50, 40), (200, 30, 30)).save(image_path)
    command = [sys.executable, "-m", "paligemma.generate", "--model", str(tiny_checkpoint), "--image",
               str(image_path), "--prompt", "caption en", "--max-new-tokens", "5"]  # fmt: skip
    printed = subprocess.run(command, capture_output=True, text=True, check=True).stdout

    processor = PaliGemmaProcessor.from_pretrained(tiny_checkpoint)
    model = PaliGemmaForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    batch = processor(text=["caption en"], images=[Image.open(image_path)], padding_side="left")
    expected = processor.batch_decode(model.generate(**batch, max_new_tokens=5), skip_special_tokens=True)[0]
    assert printed == expected + "\n"
