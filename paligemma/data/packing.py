"""Packing (``data.packing=true``): a training batch's rows concatenated into fewer, fuller sequences.

Each packed sequence holds whole rows (segments) of at most ``max_length`` tokens in all, with their images in
order; ``segment_ids`` (1, 2, ... per sequence, 0 on padding) tell the model where one ends, so that every
segment keeps its own bidirectional prefix and causal suffix, its positions restart and no token attends to
another segment (paligemma/model/gemma.py ``attention_mask_4d``). The rows of a step are those the sampler
drew, unpacked or not: the loss (the mean over the batch's label tokens), the gradients, the resumable sampler
state and the DDP ranks' step counts are those of the unpacked batch; only the padding goes.
"""

from __future__ import annotations

import torch

from paligemma.data.processor import IGNORE_INDEX

WIDTHS_TRIED = 32  # packed widths compared between the longest row and max_length


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Row indices in bins of at most ``capacity`` tokens: longest row first, each into the first bin with room.
    A row longer than ``capacity`` gets a bin of its own."""
    bins: list[list[int]] = []
    room: list[int] = []
    for row in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fit = next((b for b, free in enumerate(room) if free >= lengths[row]), None)
        if fit is None:
            bins.append([row])
            room.append(capacity - lengths[row])
        else:
            bins[fit].append(row)
            room[fit] -= lengths[row]
    return bins


def pack_rows(lengths: list[int], max_length: int) -> list[list[int]]:
    """The bins of ``first_fit_decreasing`` at the capacity (between the longest row and ``max_length``) whose
    padded batch (bins x the fullest bin) holds the fewest tokens: never more than the unpacked batch's."""
    longest = max(lengths)
    step = max(1, (max_length - longest) // WIDTHS_TRIED)
    capacities = [*range(longest, max_length, step), max(longest, max_length)]

    def padded_tokens(bins: list[list[int]]) -> int:
        return len(bins) * max(sum(lengths[i] for i in b) for b in bins)

    return min((first_fit_decreasing(lengths, c) for c in capacities), key=padded_tokens)


def pack_batch(
    batch: dict[str, torch.Tensor], images_per_row: list[int], max_length: int, pad_token_id: int
) -> dict[str, torch.Tensor]:
    """The processor's right-padded training batch (input_ids, attention_mask, token_type_ids, labels,
    pixel_values) as packed sequences, right padded, with ``segment_ids``; ``pixel_values`` reordered to the
    packed order of the rows (``images_per_row``: the images of each row, in the processor's order)."""
    lengths = batch["attention_mask"].sum(-1).tolist()
    bins = pack_rows(lengths, max_length)
    width = max(sum(lengths[i] for i in b) for b in bins)
    fill = dict(
        input_ids=pad_token_id, attention_mask=0, token_type_ids=0, labels=IGNORE_INDEX, segment_ids=0
    )
    packed = {key: torch.full((len(bins), width), value, dtype=torch.long) for key, value in fill.items()}
    first_image = torch.tensor([0, *images_per_row]).cumsum(0).tolist()
    image_order = []
    for b, rows in enumerate(bins):
        start = 0
        for segment, row in enumerate(rows, start=1):
            end = start + lengths[row]
            for key in ("input_ids", "attention_mask", "token_type_ids", "labels"):
                packed[key][b, start:end] = batch[key][row, : lengths[row]]
            packed["segment_ids"][b, start:end] = segment
            image_order.extend(range(first_image[row], first_image[row + 1]))
            start = end
    packed["pixel_values"] = batch["pixel_values"][image_order]
    return packed
