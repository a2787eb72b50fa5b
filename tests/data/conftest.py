"""Fixtures of the data tests: a small synthetic shapes dataset and a processor whose tokenizer knows its texts."""

import pytest

from paligemma.data.synthetic import make_shapes_dataset, synthetic_texts
from paligemma.data.tokenizer import build_tokenizer, save_processor_files
from tests.helpers import IMAGE_SIZE, NUM_IMAGE_TOKENS


@pytest.fixture(scope="session")
def shapes():
    return make_shapes_dataset(num_train=200, num_val=12, image_size=IMAGE_SIZE * 2, seed=0)


@pytest.fixture(scope="session")
def processor_dir(tmp_path_factory, shapes):
    path = tmp_path_factory.mktemp("processor")
    corpus = synthetic_texts(shapes) + ["a cat on a mat", "what is on the table?", "yes", "two"] * 20
    save_processor_files(path, build_tokenizer(corpus, vocab_size=400), IMAGE_SIZE, NUM_IMAGE_TOKENS)
    return path
