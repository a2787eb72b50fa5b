"""A Gemma 4 processor's files, in the layout transformers 5 saves (and the hub's gemma-4 repos hold): the
tokenizer (trained with ``build_tokenizer(..., special_tokens=GEMMA4_TOKENS)``), its special-token names, the
chat template, and processor_config.json with the image and video processors' settings inside.

transformers' ``Gemma4Processor`` reads its tokens from these names (``boi_token``, ``eoi_token``,
``image_token``, ``boa_token``/``eoa_token``/``audio_token``) and adds ``<|video|>`` itself; ours reads the same.
Scaled down from the hub's: no tool, thinking or channel tokens, and a chat template without tools or thinking.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from paligemma.data.tokenizer import GEMMA_TOKEN_NAMES, added_tokens_decoder, token_dict
from paligemma.errors import ConfigError
from paligemma.paths import write_json

START_OF_TURN, END_OF_TURN = "<|turn>", "<turn|>"
BOI_TOKEN, EOI_TOKEN, IMAGE_TOKEN, VIDEO_TOKEN = "<|image>", "<image|>", "<|image|>", "<|video|>"
BOA_TOKEN, EOA_TOKEN, AUDIO_TOKEN = "<|audio>", "<audio|>", "<|audio|>"
# real ids: 258880 <|image|>, 255999 <|image>, 258882 <image|>, 258884 <|video|>, 256000 <|audio>, ...
GEMMA4_TOKENS = [
    START_OF_TURN,
    END_OF_TURN,
    BOI_TOKEN,
    EOI_TOKEN,
    IMAGE_TOKEN,
    VIDEO_TOKEN,
    BOA_TOKEN,
    EOA_TOKEN,
    AUDIO_TOKEN,
]
# The names tokenizer_config.json gives them (transformers sets ``tokenizer.<name>`` and ``<name>_id`` from them).
GEMMA4_NAMED_TOKENS = {
    "boi_token": BOI_TOKEN,
    "eoi_token": EOI_TOKEN,
    "image_token": IMAGE_TOKEN,
    "boa_token": BOA_TOKEN,
    "eoa_token": EOA_TOKEN,
    "audio_token": AUDIO_TOKEN,
    "sot_token": START_OF_TURN,
    "eot_token": END_OF_TURN,
}
IMAGE_TOKEN_BUDGETS = (70, 140, 280, 560, 1120)  # soft tokens per image transformers' Gemma 4 accepts

# A Gemma 4 chat template, scaled down from the -it repos': a system turn of its own, "<|turn>{role}\n" ...
# "<turn|>\n" turns (assistant is "model"), text items trimmed, one "<|image|>" / "<|video|>" per image / video
# item, and "<|turn>model\n" as the generation prompt.
GEMMA4_CHAT_TEMPLATE = """{{- bos_token -}}
{%- macro render(content) -%}
    {%- if content is string -%}
        {{- content | trim -}}
    {%- else -%}
        {%- for item in content -%}
            {%- if item['type'] == 'text' -%}
                {{- item['text'] | trim -}}
            {%- elif item['type'] == 'image' -%}
                {{- '<|image|>' -}}
            {%- elif item['type'] == 'video' -%}
                {{- '<|video|>' -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{%- for message in messages -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {{- '<|turn>' + role + '\\n' -}}
    {{- render(message['content']) -}}
    {{- '<turn|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|turn>model\\n' -}}
{%- endif -%}
"""


def image_settings(image_tokens: int) -> dict:
    """Gemma4ImageProcessor's settings as the hub's files give them: pixels in [0, 1] (no normalization),
    bicubic, 16 px patches, 3 x 3 patches to a soft token, ``image_tokens`` soft tokens at most per image."""
    return {
        "do_convert_rgb": True,
        "do_normalize": False,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.0, 0.0, 0.0],
        "image_processor_type": "Gemma4ImageProcessor",
        "image_std": [1.0, 1.0, 1.0],
        "max_soft_tokens": image_tokens,
        "patch_size": 16,
        "pooling_kernel_size": 3,
        "resample": 3,
        "rescale_factor": 1 / 255,
    }


def video_settings() -> dict:
    """Gemma4VideoProcessor's: as the images', 70 soft tokens a frame, frames given (not sampled here)."""
    settings = {**image_settings(70), "do_normalize": True, "do_sample_frames": False, "num_frames": 32}
    del settings["image_processor_type"]
    return {**settings, "video_processor_type": "Gemma4VideoProcessor"}


def save_gemma4_processor_files(directory: str | Path, tok: Tokenizer, image_tokens: int = 280) -> None:
    """tokenizer.json, tokenizer_config.json, chat_template.jinja and processor_config.json (with the image and
    video processors' settings, as transformers 5 saves them) for a Gemma 4 of ``image_tokens`` soft tokens
    per image. Deviation from the hub: ``padding_side`` is "right", as in the PaliGemma files."""
    missing = [t for t in GEMMA4_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise ConfigError(
            f"the tokenizer lacks Gemma 4's tokens {missing}: build it with special_tokens=GEMMA4_TOKENS"
        )
    if image_tokens not in IMAGE_TOKEN_BUDGETS:
        raise ConfigError(f"image_tokens must be one of {IMAGE_TOKEN_BUDGETS}, got {image_tokens}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    tokenizer_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added_tokens_decoder(tok),
        **GEMMA4_NAMED_TOKENS,
        **GEMMA_TOKEN_NAMES,
        "clean_up_tokenization_spaces": False,
        "extra_special_tokens": GEMMA4_NAMED_TOKENS,
        "model_max_length": 1000000000000000019884624838656,
        "padding_side": "right",
        "processor_class": "Gemma4Processor",
        "spaces_between_special_tokens": False,
        "tokenizer_class": "GemmaTokenizer",
    }
    write_json(directory / "tokenizer_config.json", tokenizer_config)
    special_map = {**GEMMA4_NAMED_TOKENS, **{k: token_dict(v) for k, v in GEMMA_TOKEN_NAMES.items()}}
    write_json(directory / "special_tokens_map.json", special_map)
    (directory / "chat_template.jinja").write_text(GEMMA4_CHAT_TEMPLATE, encoding="utf-8")
    write_json(
        directory / "processor_config.json",
        {
            "audio_ms_per_token": 40,
            "audio_seq_length": 750,
            "image_processor": image_settings(image_tokens),
            "image_seq_length": image_tokens,
            "processor_class": "Gemma4Processor",
            "video_processor": video_settings(),
        },
    )
