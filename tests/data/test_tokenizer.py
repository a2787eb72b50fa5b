"""The Gemma-style tokenizer builder: id layout, lossless byte fallback, files transformers can load."""

import json

import pytest

from paligemma.data.tokenizer import (
    BYTE_TOKENS,
    EXTRA_TOKENS,
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
    build_tokenizer,
    save_preprocessor_config,
    save_tokenizer,
)

CORPUS = [
    "a cat sitting on a mat",
    "what is in the image?",
    "the quick brown fox jumps over the lazy dog",
    "caption en",
    "answer en how many dogs are there? 2",
    "detect cat ; dog <loc0012><loc0100>",  # reserved tokens in the corpus must not disturb the layout
    "<eos><eos> <bos>",
] * 20
ROUND_TRIP = [
    "",
    " ",
    "  leading and trailing spaces  ",
    "héllo wörld, ça va? naïve façade",
    "日本語のテキスト 中文 한국어",
    "emoji 😀🐈‍⬛👍🏽 and symbols ∑∞≠",
    "tabs\tand\nnewlines\r\n and \x00 control \x7f chars",
    "<loc0000><loc1023> cat ; <seg000><seg127> dog",
    "not tokens: <loc> <loc10000> <seg12> <0x41>",
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(CORPUS, vocab_size=400)


def test_layout(tok):
    for i, t in enumerate(SPECIAL_TOKENS + BYTE_TOKENS):
        assert tok.token_to_id(t) == i
    v = tok.token_to_id(EXTRA_TOKENS[0])
    assert len(SPECIAL_TOKENS) + len(BYTE_TOKENS) < v <= 400
    for i, t in enumerate(EXTRA_TOKENS + [IMAGE_TOKEN]):  # loc, seg, then <image>, as in the real tokenizer
        assert tok.token_to_id(t) == v + i
    assert tok.get_vocab_size() == v + 1024 + 128 + 1
    assert sorted(tok.get_vocab().values()) == list(range(tok.get_vocab_size()))  # no gaps, no duplicates


def test_special_flags(tok):
    added = {t.content: t.special for t in tok.get_added_tokens_decoder().values()}
    assert all(added[t] for t in SPECIAL_TOKENS + [IMAGE_TOKEN])
    assert not any(added[t] for t in EXTRA_TOKENS)


def test_spaces_are_metaspace_without_dummy_prefix(tok):
    enc = tok.encode("a cat", add_special_tokens=False)
    assert enc.tokens[0] == "a" and "▁cat" in enc.tokens
    assert tok.encode("a cat").ids[0] == tok.token_to_id("<bos>")


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(tok, text):
    ids = tok.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.token_to_id("<unk>") not in ids


def test_loc_seg_are_single_tokens_kept_by_skip_special(tok):
    ids = tok.encode("<bos><loc0005><seg017> cat<eos><pad>", add_special_tokens=False).ids
    assert ids[:3] == [tok.token_to_id(t) for t in ["<bos>", "<loc0005>", "<seg017>"]]
    assert tok.decode(ids, skip_special_tokens=True) == "<loc0005><seg017> cat"


def test_vocab_size_too_small():
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(CORPUS, vocab_size=100)


def test_saved_files_load_in_transformers(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    save_tokenizer(tok, tmp_path)
    save_preprocessor_config(tmp_path, image_size=32, num_image_tokens=16)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is True and config["add_eos_token"] is False
    assert config["tokenizer_class"] == "GemmaTokenizer"

    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert len(hf) == tok.get_vocab_size()
    assert (hf.pad_token_id, hf.eos_token_id, hf.bos_token_id, hf.unk_token_id) == (0, 1, 2, 3)
    for text in ROUND_TRIP:
        assert hf(text).input_ids == tok.encode(text).ids
        ids = tok.encode(text, add_special_tokens=False).ids
        assert hf.decode(ids) == tok.decode(ids, skip_special_tokens=False)
        assert hf.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True)

    pre = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert pre["size"] == {"height": 32, "width": 32} and pre["image_seq_length"] == 16
    assert pre["resample"] == 3 and pre["image_mean"] == pre["image_std"] == [0.5] * 3
    image_processor = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    assert image_processor.image_seq_length == 16
