import pytest
import torch

from paligemma import PaliGemmaConfig
from paligemma.model.generation import sample_next
from paligemma.model.kv_cache import KVCache, SlidingKVCache
from paligemma.tiny import random_batch
from tests.helpers import SMALL_CONFIGS, hf_reference, ours_from_hf


def prompt_batch(config, prefix_lens, seed=0):
    batch = random_batch(config, prefix_lens, [0] * len(prefix_lens), seed=seed, padding_side="left")
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


@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam-3"])
@pytest.mark.parametrize("window", [3, 10, 20], ids=["window-3", "window-10", "window-20"])
def test_sliding_cache_generation_matches_transformers_past_the_window(window, num_beams):
    """Left-padded prompts of 7, 15 and 11 tokens (15 slots) and 10 new tokens. Window 3: the prompt and the
    generation each cross it many times; 10: the first steps' windows hold the short row's padding; 20: the
    prompt fits, the generation crosses it. The sliding layers' caches stay min(window, 25) slots wide, beams
    expanding the rows or not; the full layer's holds all 25."""
    gemma2 = SMALL_CONFIGS["gemma2"]
    config = PaliGemmaConfig.from_dict(
        dict(gemma2, text_config=dict(gemma2["text_config"], sliding_window=window))
    )
    hf = hf_reference(config)
    ours = ours_from_hf(hf)
    batch = prompt_batch(config, [1, 9, 5])
    P, rows = batch["input_ids"].shape[1], 3 * num_beams
    kwargs = dict(max_new_tokens=10, num_beams=num_beams, eos_token_id=3, pad_token_id=7)
    with torch.no_grad():
        expected = hf.generate(**batch, do_sample=False, **kwargs)[:, P:]
    shapes, decode_step = set(), ours.decode_step

    def recording_shapes(tokens, state, decode_weights):
        shapes.update((type(cache), cache.k_cache.shape) for cache in state.caches)
        return decode_step(tokens, state, decode_weights)

    ours.decode_step = recording_shapes
    assert P == 15 and expected.shape == (3, 10)
    assert torch.equal(ours.generate(**batch, **kwargs), expected)
    assert shapes == {(SlidingKVCache, (rows, 2, min(window, 25), 16)), (KVCache, (rows, 2, 25, 16))}


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


def test_a_config_eos_list_stops_at_any_of_its_ids():
    """PaliGemma 2 configs list eos_token_id as [1, 107]: generation stops at whichever comes first."""
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS["gemma2"])
    model = ours_from_hf(hf_reference(config))
    batch = prompt_batch(config, [4])
    free_run = model.generate(**batch, max_new_tokens=8, eos_token_id=[])[0].tolist()
    model.config.text_config.eos_token_id = [1, free_run[2]]
    end = min(free_run.index(t) for t in (1, free_run[2]) if t in free_run) + 1
    assert model.generate(**batch, max_new_tokens=8)[0].tolist() == free_run[:end]


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


def beam_stop_id(model, batch, num_beams, row=1, max_new_tokens=10, exclude=()):
    """A token of `row`'s free beam-search run that, made the eos, ends that row's best hypothesis early."""
    kwargs = dict(max_new_tokens=max_new_tokens, num_beams=num_beams)
    free_run = model.generate(**batch, eos_token_id=[], **kwargs)
    for token in free_run[row, 1:].tolist() + free_run[row, :1].tolist():
        stopped = model.generate(**batch, eos_token_id=[token, *exclude], **kwargs)
        if token not in exclude and token in stopped[row, : max_new_tokens - 1].tolist():
            return token
    raise AssertionError("no token of the free run ends the search early")


# Each config runs two opposite corners of (prompts, beams, eos); the mqa config also runs the other two below.
BEAM_CASES = [([6], 2, False), ([3, 7, 5], 3, True)]
BEAM_IDS = ["single-2-no-eos", "left-padded-batch-3-eos"]


@pytest.mark.parametrize(("prefix_lens", "num_beams", "stops"), BEAM_CASES, ids=BEAM_IDS)
def test_beam_search_matches_transformers(small_config, prefix_lens, num_beams, stops):
    hf = hf_reference(small_config)
    ours = ours_from_hf(hf)
    batch = prompt_batch(small_config, prefix_lens)
    row = len(prefix_lens) // 2
    eos = beam_stop_id(ours, batch, num_beams, row) if stops else small_config.text_config.eos_token_id
    # pad 7, not 0: with pad 0 transformers pads beam outputs with the eos (see the test below)
    kwargs = dict(max_new_tokens=10, num_beams=num_beams, eos_token_id=eos, pad_token_id=7)
    with torch.no_grad():
        expected = hf.generate(**batch, do_sample=False, **kwargs)[:, batch["input_ids"].shape[1] :]
    got = ours.generate(**batch, **kwargs)
    assert torch.equal(got, expected)
    if stops:  # the row ends early at the eos, padded after it
        stop_at = int((got[row] == eos).nonzero()[0])
        assert stop_at < 9 and (got[row, stop_at + 1 :] == 7).all()


@pytest.mark.parametrize(("prefix_lens", "num_beams", "stops"), [([6], 3, True), ([3, 7, 5], 2, False)],
                         ids=["single-3-eos", "left-padded-batch-2-no-eos"])  # fmt: skip
def test_beam_search_matches_transformers_in_the_other_corners(prefix_lens, num_beams, stops):
    test_beam_search_matches_transformers(
        PaliGemmaConfig.from_dict(SMALL_CONFIGS["mqa"]), prefix_lens, num_beams, stops
    )


@pytest.fixture(scope="module")
def two_stop_setup():
    """4 left-padded rows and two stop ids that trigger; the rows fill their K hypotheses at different steps."""
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS["mqa"])
    hf = hf_reference(config)
    ours = ours_from_hf(hf)
    batch = prompt_batch(config, [3, 7, 5, 2], seed=2)
    first = beam_stop_id(ours, batch, 3, row=2, max_new_tokens=12)
    eos = [first, beam_stop_id(ours, batch, 3, row=0, max_new_tokens=12, exclude=[first])]
    return hf, ours, batch, eos


@pytest.mark.parametrize(
    "options",
    [dict(length_penalty=0.0), dict(length_penalty=2.5), dict(length_penalty=-1.0),
     dict(early_stopping=True), dict(early_stopping="never", length_penalty=2.0)],
    ids=["lp0", "lp2.5", "lp-1", "early-stop", "never"],
)  # fmt: skip
def test_beam_search_options_match_transformers(two_stop_setup, options):
    hf, ours, batch, eos = two_stop_setup
    kwargs = dict(max_new_tokens=12, num_beams=3, eos_token_id=eos, pad_token_id=7, **options)
    with torch.no_grad():
        expected = hf.generate(**batch, do_sample=False, **kwargs)[:, batch["input_ids"].shape[1] :]
    assert torch.equal(ours.generate(**batch, **kwargs), expected)


def test_beam_search_pads_with_the_pad_id():
    """transformers pads finished beams with the eos when pad id is 0 (`pad or eos` on a tensor); we use the pad."""
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS["mqa"])
    hf = hf_reference(config)
    ours = ours_from_hf(hf)
    batch = prompt_batch(config, [3, 7, 5])
    stop = beam_stop_id(ours, batch, 2)
    got = ours.generate(**batch, max_new_tokens=10, num_beams=2, eos_token_id=stop)
    expected = hf_new_tokens(hf, batch, max_new_tokens=10, num_beams=2, eos_token_id=stop)
    after_stop = (got == stop).long().cumsum(1) - (got == stop).long() > 0  # strictly after the first stop
    assert after_stop.any() and (got[after_stop] == config.text_config.pad_token_id).all()
    assert torch.equal(got, expected.masked_fill(after_stop, config.text_config.pad_token_id))


def test_beam_search_with_one_beam_is_greedy_and_beams_can_beat_it():
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS["mha"])
    model = ours_from_hf(hf_reference(config))
    batch = prompt_batch(config, [4, 2])
    greedy = model.generate(**batch, max_new_tokens=8, eos_token_id=[])
    beams = model.generate(**batch, max_new_tokens=8, eos_token_id=[], num_beams=3)
    assert beams.shape == greedy.shape and not torch.equal(beams, greedy)
    with pytest.raises(NotImplementedError):
        model.generate(**batch, num_beams=2, do_sample=True)


def test_kv_cache_reorder_expands_and_permutes_rows():
    cache = KVCache(2, 5, 1, 3, torch.float32)
    k = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 1, 4, 3)
    cache.update(k, -k)
    cache.reorder(torch.tensor([0, 0, 1, 1]))
    cache.reorder(torch.tensor([3, 0, 1, 2]))
    keys, values = cache.update(torch.zeros(4, 1, 1, 3), torch.zeros(4, 1, 1, 3))
    assert keys.shape == (4, 1, 5, 3) and cache.size == 5
    assert torch.equal(keys[:, :, :4], k[[1, 0, 0, 1]]) and torch.equal(values[:, :, :4], -k[[1, 0, 0, 1]])


def test_right_padded_prompts_are_refused():
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS["mqa"])
    model = ours_from_hf(hf_reference(config))
    batch = random_batch(config, [2, 5], [0, 0])
    batch.pop("labels")
    with pytest.raises(ValueError, match="left-padded"):
        model.generate(**batch)


def test_fixed_length_runs_every_step_and_returns_the_same_tokens():
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS["mha"])
    model = ours_from_hf(hf_reference(config))
    batch = prompt_batch(config, [4, 2])
    stop = [int(t) for t in model.generate(**batch, max_new_tokens=1)[:, 0]]  # both rows stop at once
    calls = []
    model.decode_step = lambda *args, step=model.decode_step: calls.append(1) or step(*args)
    assert model.generate(**batch, max_new_tokens=6, eos_token_id=stop).shape == (2, 1) and not calls
    fixed = model.generate(**batch, max_new_tokens=6, eos_token_id=stop, fixed_length=True)
    assert len(calls) == 5 and fixed[:, 0].tolist() == stop
    assert (fixed[:, 1:] == config.text_config.pad_token_id).all()


@pytest.mark.parametrize("option", ["max_length", "min_new_tokens", "repetition_penalty"])
def test_unknown_generate_options_are_a_type_error(option):
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS["mha"])
    model = ours_from_hf(hf_reference(config))
    with pytest.raises(TypeError, match=option):
        model.generate(**prompt_batch(config, [3]), **{option: 5})


def test_unknown_forward_arguments_are_a_type_error():
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS["mha"])
    model = ours_from_hf(hf_reference(config))
    with pytest.raises(TypeError, match="use_cache"):
        model(**prompt_batch(config, [3]), use_cache=True)


@pytest.mark.parametrize("name", ["gqa", "gemma2"])
def test_bf16_decode_steps_match_transformers_bf16_forward(name):
    """bf16 decode (grouped matmuls on a CPU with bf16 instructions, else SDPA; Gemma 2's soft-capped matmuls)
    gives, step by step, the logits transformers' bf16 forward gives over the prompt and the tokens fed, within
    what bf16 forward passes differ by."""
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS[name])
    hf = hf_reference(config)
    ours = ours_from_hf(hf).to(torch.bfloat16)
    hf = hf.to(torch.bfloat16)
    batch = prompt_batch(config, [2, 6])
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    fed = torch.randint(
        1, config.text_config.vocab_size - 1, (2, 5), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        logits, state = ours.prefill(**batch, max_new_tokens=fed.shape[1])
        steps = [logits] + [ours.decode_step(fed[:, k], state) for k in range(fed.shape[1] - 1)]
        ones = torch.ones_like(fed)
        ref = hf(
            input_ids=torch.cat([batch["input_ids"], fed], 1),
            pixel_values=batch["pixel_values"],
            attention_mask=torch.cat([batch["attention_mask"], ones], 1),
            token_type_ids=torch.cat([batch["token_type_ids"], ones], 1),
        ).logits[:, batch["input_ids"].shape[1] - 1 : -1]
    assert (torch.stack(steps, 1).float() - ref.float()).abs().max() < 0.03


def test_prefill_and_decode_steps_equal_generate_and_rows_reorder():
    config = PaliGemmaConfig.from_dict(SMALL_CONFIGS["gqa"])
    model = ours_from_hf(hf_reference(config))
    batch = prompt_batch(config, [2, 6])
    expected = model.generate(**batch, max_new_tokens=4, eos_token_id=[])
    logits, state = model.prefill(**batch, max_new_tokens=4)
    tokens = [logits.argmax(-1)]
    for _ in range(3):
        tokens.append(model.decode_step(tokens[-1], state).argmax(-1))
    assert torch.equal(torch.stack(tokens, 1), expected)
    assert state.length == batch["input_ids"].shape[1] + 3 and state.caches[0].size == state.length

    logits, state = model.prefill(**batch, max_new_tokens=2)
    state.select_rows(torch.tensor([1, 1, 0]))  # rows swapped and one repeated
    step = model.decode_step(logits.argmax(-1)[[1, 1, 0]], state).argmax(-1)
    assert step.tolist() == [expected[1, 1], expected[1, 1], expected[0, 1]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sliding", [False, True])
def test_attention_over_every_slot_of_a_cache_equals_attention_over_its_filled_ones(sliding, dtype):
    from paligemma.model.attention import grouped_attention

    gen = torch.Generator().manual_seed(0)
    B, H, n_kv, hd, prompt = 2, 4, 2, 8, 5
    cache = SlidingKVCache(B, 7, n_kv, hd, dtype) if sliding else KVCache(B, 12, n_kv, hd, dtype)
    cache.update(*torch.randn(2, B, n_kv, prompt, hd, generator=gen).to(dtype))
    for _ in range(3):  # the sliding ring (7 slots) is filled by the second step, wrapped by the third
        k, v = cache.update(*torch.randn(2, B, n_kv, 1, hd, generator=gen).to(dtype))
        q = torch.randn(B, H, 1, hd, generator=gen).to(dtype)
        every_k, every_v = cache.every_slot()
        filled = k.shape[2]
        every_mask = torch.rand(B, 1, 1, every_k.shape[2], generator=gen) > 0.3
        every_mask[..., filled - 1] = True  # each query sees its own key
        every_mask[..., filled:] = False  # as a decode step's mask holds the unfilled slots
        expected = grouped_attention(q, k, v, every_mask[..., :filled], hd**-0.5, None)
        # bf16: bitwise. fp32 on AVX2: MKL blocks the longer product differently, a rounding of 1 ulp or so
        tolerance = {"rtol": 0, "atol": 0} if dtype == torch.bfloat16 else {"rtol": 4e-7, "atol": 4e-7}
        torch.testing.assert_close(
            grouped_attention(q, every_k, every_v, every_mask, hd**-0.5, None), expected, **tolerance
        )
