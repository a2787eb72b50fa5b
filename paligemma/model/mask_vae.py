"""The VQ-VAE that turns a 64x64 segmentation mask into 16 codes (<seg000>..<seg127>) and back.

It computes what big_vision does: big_vision/pp/proj/paligemma/segmentation.py encodes (TF convolutions
with 'SAME' padding over the PyTorch weights), big_vision/evaluators/proj/paligemma/transfers/segmentation.py
decodes (flax ConvTranspose, kernel 4, stride 2, padding 2, transpose_kernel=True: PyTorch's
ConvTranspose2d(k=4, s=2, p=1)). The checkpoint, vae-oid.npz, holds a PyTorch state dict; its names are
the parameter names here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from paligemma.errors import CheckpointError, MissingFileError

log = logging.getLogger(__name__)

MASK_SIZE = 64  # masks are resized to 64x64 before encoding
GRID = 4  # 64 / 2**4: the codes form a 4x4 grid, row-major
CODEBOOK_KEY = "_vq_vae._embedding"


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME': the output is ceil(size / stride); the odd pixel of padding goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A convolution padded as TF's 'SAME' pads (asymmetric when the total is odd)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        return super().forward(F.pad(x, (left, right, top, bottom)))


class ResBlock(nn.Module):
    """x + 1x1(relu(3x3(relu(3x3(x))))); no activation after the sum."""

    def __init__(self, dim: int, conv: Callable[[int, int, int], nn.Conv2d]):
        super().__init__()
        self.net = nn.Sequential(
            conv(dim, dim, 3), nn.ReLU(), conv(dim, dim, 3), nn.ReLU(), conv(dim, dim, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class VectorQuantizer(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self._embedding = nn.Parameter(torch.randn(num_embeddings, embedding_dim))  # until weights load

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(N, D) vectors -> (N,) index of the nearest codeword by squared L2 (the first one on a tie)."""
        e = self._embedding
        distances = (z**2).sum(1, keepdim=True) + (e**2).sum(1) - 2 * z @ e.T  # (N, K)
        return distances.argmin(1)


def centred_conv(c_in: int, c_out: int, kernel: int) -> nn.Conv2d:
    """flax's Conv(padding=k // 2), as big_vision's decoder pads."""
    return nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)


def encoder(widths: tuple[int, ...], embedding_dim: int) -> nn.Sequential:
    """encoder.{0,2,4,6}: 4x4 stride-2 convs + ReLU; encoder.{8,9}: residual blocks; encoder.10: 1x1."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip((1, *widths[:-1]), widths, strict=True):
        layers += [SameConv2d(c_in, c_out, 4, stride=2), nn.ReLU()]
    layers += [ResBlock(widths[-1], SameConv2d), ResBlock(widths[-1], SameConv2d)]
    layers.append(SameConv2d(widths[-1], embedding_dim, 1))
    return nn.Sequential(*layers)


def decoder(widths: tuple[int, ...], embedding_dim: int) -> nn.Sequential:
    """decoder.0: 1x1 + ReLU; decoder.{2,3}: residual blocks; decoder.{4,6,8,10}: 4x4 stride-2 transposed
    convs + ReLU; decoder.12: 1x1 to one channel."""
    dim = widths[-1]
    layers: list[nn.Module] = [nn.Conv2d(embedding_dim, dim, 1), nn.ReLU()]
    layers += [ResBlock(dim, centred_conv), ResBlock(dim, centred_conv)]
    outs = widths[::-1]
    for c_in, c_out in zip((dim, *outs[:-1]), outs, strict=True):
        layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
    layers.append(nn.Conv2d(outs[-1], 1, 1))
    return nn.Sequential(*layers)


class MaskVAE(nn.Module):
    """(B, 64, 64) masks in [0, 1] <-> (B, 16) codes; decoded masks are > 0 inside the object."""

    def __init__(
        self, widths: tuple[int, ...] = (16, 32, 64, 128), num_embeddings: int = 128, embedding_dim: int = 512
    ):
        super().__init__()
        self.encoder = encoder(widths, embedding_dim)
        self._vq_vae = VectorQuantizer(num_embeddings, embedding_dim)
        self.decoder = decoder(widths, embedding_dim)

    def encode(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, 64, 64) in [0, 1] -> (B, 16) int64 codes."""
        B = masks.shape[0]
        if tuple(masks.shape[1:]) != (MASK_SIZE, MASK_SIZE):
            raise ValueError(f"masks must be (B, {MASK_SIZE}, {MASK_SIZE}), got {tuple(masks.shape)}")
        x = 2 * (masks[:, None].to(self._vq_vae._embedding.dtype) - 0.5)  # (B, 1, 64, 64) in [-1, 1]
        z = self.encoder(x)  # (B, D, 4, 4)
        z = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B*16, D), row-major cells
        return self._vq_vae(z).view(B, GRID * GRID)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, 16) codes -> (B, 64, 64) mask logits."""
        B = codes.shape[0]
        z = self._vq_vae._embedding[codes.long()]  # (B, 16, D)
        z = z.view(B, GRID, GRID, -1).permute(0, 3, 1, 2)  # (B, D, 4, 4)
        return self.decoder(z)[:, 0]  # (B, 64, 64)

    @classmethod
    def from_pretrained(cls, path) -> MaskVAE:
        """Reads vae-oid.npz as published, or a .safetensors with the same names; widths come from the weights."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"mask VAE weights {path} do not exist")
        if path.suffix == ".npz":
            with np.load(path) as npz:
                tensors = {k: torch.from_numpy(npz[k]) for k in npz.files}
        else:
            tensors = load_file(path)

        def shape(key: str) -> tuple[int, ...]:
            if key not in tensors:
                raise CheckpointError(f"mask VAE weights {path} lack {key}")
            return tuple(tensors[key].shape)

        widths = tuple(shape(f"encoder.{2 * i}.weight")[0] for i in range(4))
        num_embeddings, embedding_dim = shape(CODEBOOK_KEY)
        model = cls(widths, num_embeddings, embedding_dim)
        state = model.state_dict()
        for key, expected in state.items():
            if shape(key) != tuple(expected.shape):
                raise CheckpointError(
                    f"mask VAE weights {path}: {key} is {shape(key)}, the model wants {tuple(expected.shape)}"
                )
        unused = sorted(set(tensors) - set(state))
        if unused:
            log.warning("mask VAE weights %s hold keys the model does not use: %s", path, ", ".join(unused))
        model.load_state_dict({k: tensors[k].float() for k in state})
        return model

    def save_pretrained(self, path) -> None:
        """One safetensors file with the checkpoint's names."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(path))
