"""MaskVAE against a NumPy reference written from big_vision's ops: the encoder of
big_vision/pp/proj/paligemma/segmentation.py (tf.nn.conv2d, 'SAME', NHWC, kernels transposed (2, 3, 1, 0))
and the decoder of big_vision/evaluators/proj/paligemma/transfers/segmentation.py (flax Conv padding k // 2,
flax ConvTranspose kernel 4, stride 2, padding 2, transpose_kernel=True, i.e. jax.lax.conv_transpose)."""

import logging

import numpy as np
import pytest
import torch

from paligemma.errors import CheckpointError
from paligemma.model.mask_vae import MaskVAE, SameConv2d, same_padding

# Random weights in the published layout: vae-oid.npz's names and PyTorch shapes, every parameter drawn.


def random_checkpoint(seed: int = 0, **sizes) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for key, p in MaskVAE(**sizes).state_dict().items():
        fan_in = p[0].numel() if key.endswith("weight") and p.ndim == 4 else 1
        if (
            key.startswith("decoder.") and p.ndim == 4 and p.shape[2] == 4
        ):  # conv-transpose: (in, out, kh, kw)
            fan_in = p.shape[0] * 4
        out[key] = (rng.standard_normal(tuple(p.shape)) / np.sqrt(fan_in)).astype(np.float32)
    return out


def write_npz(tmp_path, checkpoint, name="vae-oid.npz"):
    path = tmp_path / name
    np.savez(path, **checkpoint)  # type: ignore[arg-type]
    return path


# The reference: NHWC, HWIO kernels, float32, as big_vision computes.


def hwio(weight: np.ndarray) -> np.ndarray:
    return np.transpose(weight, (2, 3, 1, 0))  # big_vision's transp


def conv(x, kernel, bias, stride, pads):
    """x (B, H, W, I), kernel (kh, kw, I, O), explicit (before, after) pads per spatial axis."""
    x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    kh, kw, _, o = kernel.shape
    ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    y = np.zeros((x.shape[0], ho, wo, o), np.float32)
    for i in range(kh):
        for j in range(kw):
            y += (
                x[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
                @ kernel[i, j]
            )
    return y + bias


def tf_same_pads(size, k, s):
    # TensorFlow's 'SAME': out = ceil(size / s), pad_total = max((out - 1) * s + k - size, 0), extra pixel after.
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def conv_tf_same(ck, x, name, stride):
    kernel = hwio(ck[name + ".weight"])
    pads = (
        tf_same_pads(x.shape[1], kernel.shape[0], stride),
        tf_same_pads(x.shape[2], kernel.shape[1], stride),
    )
    return conv(x, kernel, ck[name + ".bias"], stride, pads)


def conv_flax(ck, x, name):
    kernel = hwio(ck[name + ".weight"])
    p = kernel.shape[0] // 2
    return conv(x, kernel, ck[name + ".bias"], 1, ((p, p), (p, p)))


def conv_transpose_lax(ck, x, name):
    """jax.lax.conv_transpose(strides 2, padding ((2, 2), (2, 2)), transpose_kernel=True) on flax's kernel."""
    kernel = hwio(ck[name + ".weight"])  # (kh, kw, out, in): flax's layout for transpose_kernel=True
    kernel = kernel[::-1, ::-1].swapaxes(2, 3)  # flip spatial axes, swap in/out -> (kh, kw, in, out)
    b, h, w, c = x.shape
    dilated = np.zeros((b, 2 * h - 1, 2 * w - 1, c), np.float32)  # lhs_dilation = strides
    dilated[:, ::2, ::2] = x
    return conv(dilated, np.ascontiguousarray(kernel), ck[name + ".bias"], 1, ((2, 2), (2, 2)))


def relu(x):
    return np.maximum(x, 0)


def resblock(ck, x, name, conv_fn):
    y = relu(conv_fn(ck, x, name + ".0"))
    y = relu(conv_fn(ck, y, name + ".2"))
    return conv_fn(ck, y, name + ".4") + x


def reference_encoder(ck, masks):
    """(B, 64, 64) -> (B*16, D) encoder outputs, row-major cells."""
    x = 2.0 * (masks[..., None].astype(np.float32) - 0.5)
    for n in range(4):
        x = relu(conv_tf_same(ck, x, f"encoder.{2 * n}", 2))
    for n in range(2):
        x = resblock(ck, x, f"encoder.{8 + n}.net", lambda c, v, name: conv_tf_same(c, v, name, 1))
    x = conv_tf_same(ck, x, "encoder.10", 1)
    return x.reshape(-1, x.shape[-1])


def reference_distances(ck, masks):
    flat, e = reference_encoder(ck, masks), ck["_vq_vae._embedding"]
    return (flat**2).sum(1, keepdims=True) + (e**2).sum(1) - 2 * flat @ e.T  # (B*16, K)


def reference_decode(ck, codes):
    e = ck["_vq_vae._embedding"]
    x = e[codes.reshape(-1)].reshape(codes.shape[0], 4, 4, e.shape[1])
    x = relu(conv_flax(ck, x, "decoder.0"))
    for n in range(2):
        x = resblock(ck, x, f"decoder.{2 + n}.net", conv_flax)
    for n in range(4):
        x = relu(conv_transpose_lax(ck, x, f"decoder.{4 + 2 * n}"))
    return conv_flax(ck, x, "decoder.12")[..., 0]  # (B, 64, 64)


def random_masks(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64] / 63.0
    masks = [
        np.clip(1.5 - np.hypot((yy - cy) / ry, (xx - cx) / rx) + 0.2 * rng.random((64, 64)), 0, 1)
        for cy, cx, ry, rx in rng.uniform([0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.5, 0.5], (n, 4))
    ]
    return np.stack(masks).astype(np.float32)


@pytest.fixture(scope="module")
def checkpoint():
    """Random weights; half the codebook sits near encoder outputs of random_masks(6), so codes vary by cell."""
    ck = random_checkpoint()
    z = reference_encoder(ck, random_masks(6))  # (96, D)
    rng = np.random.default_rng(5)
    cells = rng.permutation(len(z))[:64]
    ck["_vq_vae._embedding"][:64] = z[cells] + 0.01 * rng.standard_normal(z[cells].shape).astype(np.float32)
    return ck


@pytest.fixture
def npz(tmp_path, checkpoint):
    return write_npz(tmp_path, checkpoint)


def test_same_padding_is_tensorflows_including_the_asymmetric_case():
    assert same_padding(64, 4, 2) == (1, 1)
    assert same_padding(64, 3, 1) == (1, 1)
    assert same_padding(4, 1, 1) == (0, 0)
    assert same_padding(7, 4, 2) == (1, 2)  # odd total: the extra pixel goes after
    torch.manual_seed(0)
    layer = SameConv2d(3, 5, 4, stride=2)
    x = torch.randn(2, 3, 7, 9)
    ck = {"c.weight": layer.weight.detach().numpy(), "c.bias": layer.bias.detach().numpy()}
    expected = conv_tf_same(ck, x.permute(0, 2, 3, 1).numpy(), "c", 2)
    torch.testing.assert_close(layer(x).detach().permute(0, 2, 3, 1), torch.from_numpy(expected))


def test_encode_gives_big_visions_codes(npz, checkpoint):
    masks = random_masks(6)
    distances = reference_distances(checkpoint, masks)
    nearest = np.sort(distances, axis=1)
    assert (nearest[:, 1] - nearest[:, 0] > 1e-4 * np.abs(distances).max()).all()  # far above float32 error
    expected = distances.argmin(1).reshape(-1, 16)
    assert len(np.unique(expected)) > 32  # the cells differ, so a wrong cell order shows
    codes = MaskVAE.from_pretrained(npz).encode(torch.from_numpy(masks))
    assert codes.dtype == torch.int64 and codes.shape == (6, 16)
    np.testing.assert_array_equal(codes.numpy(), expected)


def test_decode_matches_big_visions_decoder(npz, checkpoint):
    codes = np.random.default_rng(2).integers(0, 128, (3, 16))
    expected = reference_decode(checkpoint, codes)
    decoded = MaskVAE.from_pretrained(npz).decode(torch.from_numpy(codes))
    assert decoded.dtype == torch.float32 and decoded.shape == (3, 64, 64)
    assert np.abs(expected).max() > 0.1  # the output is not trivially zero
    np.testing.assert_allclose(decoded.detach().numpy(), expected, rtol=0, atol=1e-5)


def test_widths_come_from_the_weights(tmp_path):
    sizes = {"widths": (4, 8, 8, 16), "num_embeddings": 32, "embedding_dim": 24}
    checkpoint = random_checkpoint(3, **sizes)
    model = MaskVAE.from_pretrained(write_npz(tmp_path, checkpoint))
    codes = np.random.default_rng(4).integers(0, 32, (2, 16))
    decoded = model.decode(torch.from_numpy(codes)).detach().numpy()
    np.testing.assert_allclose(decoded, reference_decode(checkpoint, codes), rtol=0, atol=1e-5)


def test_npz_and_safetensors_round_trip(tmp_path, npz, checkpoint):
    model = MaskVAE.from_pretrained(npz)
    model.save_pretrained(tmp_path / "out" / "vae.safetensors")
    again = MaskVAE.from_pretrained(tmp_path / "out" / "vae.safetensors")
    for key, value in again.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), checkpoint[key], err_msg=key)
    masks = torch.from_numpy(random_masks(2))
    assert torch.equal(again.encode(masks), model.encode(masks))


def test_a_missing_key_is_a_one_line_error_naming_it(tmp_path, checkpoint):
    broken = {k: v for k, v in checkpoint.items() if k != "decoder.3.net.2.bias"}
    with pytest.raises(CheckpointError, match=r"decoder\.3\.net\.2\.bias") as error:
        MaskVAE.from_pretrained(write_npz(tmp_path, broken))
    assert "\n" not in str(error.value)


def test_a_mis_shaped_key_is_a_one_line_error_naming_it(tmp_path, checkpoint):
    broken = dict(checkpoint, **{"decoder.8.weight": np.zeros((64, 31, 4, 4), np.float32)})
    with pytest.raises(CheckpointError, match=r"decoder\.8\.weight is \(64, 31, 4, 4\)") as error:
        MaskVAE.from_pretrained(write_npz(tmp_path, broken))
    assert "\n" not in str(error.value)


def test_unused_keys_are_one_warning_line(tmp_path, checkpoint, caplog):
    extra = dict(checkpoint, **{"_vq_vae._ema_w": np.zeros(3, np.float32), "step": np.zeros((), np.int64)})
    with caplog.at_level(logging.WARNING, logger="paligemma.model.mask_vae"):
        MaskVAE.from_pretrained(write_npz(tmp_path, extra))
    [record] = caplog.records
    assert "_vq_vae._ema_w, step" in record.getMessage() and "\n" not in record.getMessage()
