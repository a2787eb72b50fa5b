"""A Gemma 3 processor's files, written as the hub's gemma-3 repos hold them: the tokenizer (trained with
``build_tokenizer(..., gemma3=True)``), its special-token names, the chat template and the image settings.

transformers' ``AutoProcessor.from_pretrained`` builds a ``Gemma3Processor`` from them; ours reads the same.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from paligemma.data.tokenizer import (
    GEMMA3_IMAGE_TOKENS,
    GEMMA3_TOKENS,
    GEMMA_TOKEN_NAMES,
    added_tokens_decoder,
    token_dict,
)
from paligemma.errors import ConfigError
from paligemma.paths import write_json

# The chat template of the gemma-3 -it repos (their chat_template.json, and transformers' Gemma 3 conversion
# script): one "<start_of_image>" per image item, text items trimmed, an optional system turn folded into the
# first user turn, and "<start_of_turn>model\n" as the generation prompt.
GEMMA3_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""
PAN_AND_SCAN_FIELDS = [
    "do_pan_and_scan",
    "pan_and_scan_max_num_crops",
    "pan_and_scan_min_crop_size",
    "pan_and_scan_min_ratio_to_activate",
]


def save_gemma3_processor_files(
    directory: str | Path, tok: Tokenizer, image_size: int, num_image_tokens: int
) -> None:
    """tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat_template.jinja,
    preprocessor_config.json and processor_config.json for a Gemma 3 of ``image_size`` px and
    ``num_image_tokens`` tokens per image.

    The pan & scan fields are null, as in the hub's files (transformers' Gemma3Processor takes its own defaults
    or the call's arguments, whatever the file says). Deviation from the hub: ``padding_side`` is "right", as in
    the PaliGemma files (``save_tokenizer``).
    """
    missing = [t for t in GEMMA3_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise ConfigError(f"the tokenizer lacks Gemma 3's tokens {missing}: build it with gemma3=True")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    tokenizer_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added_tokens_decoder(tok),
        **GEMMA3_IMAGE_TOKENS,
        **GEMMA_TOKEN_NAMES,
        "clean_up_tokenization_spaces": False,
        "extra_special_tokens": GEMMA3_IMAGE_TOKENS,
        "model_max_length": 1000000000000000019884624838656,
        "padding_side": "right",
        "processor_class": "Gemma3Processor",
        "spaces_between_special_tokens": False,
        "tokenizer_class": "GemmaTokenizer",
        "use_default_system_prompt": False,
    }
    special_map = {**GEMMA3_IMAGE_TOKENS, **{k: token_dict(v) for k, v in GEMMA_TOKEN_NAMES.items()}}
    image_settings = {
        "do_convert_rgb": None,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "Gemma3ImageProcessor",
        "image_seq_length": num_image_tokens,
        "image_std": [0.5, 0.5, 0.5],
        **dict.fromkeys(PAN_AND_SCAN_FIELDS),
        "processor_class": "Gemma3Processor",
        "resample": 2,
        "rescale_factor": 1 / 255,
        "size": {"height": image_size, "width": image_size},
    }
    write_json(directory / "tokenizer_config.json", tokenizer_config)
    write_json(directory / "special_tokens_map.json", special_map)
    (directory / "chat_template.jinja").write_text(GEMMA3_CHAT_TEMPLATE, encoding="utf-8")
    write_json(directory / "preprocessor_config.json", image_settings)
    write_json(
        directory / "processor_config.json",
        {"image_seq_length": num_image_tokens, "processor_class": "Gemma3Processor"},
    )
