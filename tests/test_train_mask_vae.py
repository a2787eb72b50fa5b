"""python -m paligemma.train_mask_vae: straight-through training that lowers the loss, dead codes drawn from the
batch, a file MaskVAE.from_pretrained reads back, one-line errors; and the shipped tiny VAE reconstructs held-out
masks."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from paligemma.data.outlines import KINDS, SHAPES, batch, outlines
from paligemma.model.mask_vae import MaskVAE
from paligemma.train_mask_vae import (
    HELD_OUT_STREAM,
    evaluate,
    main,
    parse_args,
    quantised_forward,
    restart_dead_codes,
    train,
)
from tests.helpers import assert_one_line_error

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "assets" / "tiny-mask-vae" / "mask_vae.safetensors"
TINY = ["--widths", "8,8,16,16", "--embedding-dim", "16", "--num-embeddings", "16", "--batch-size", "16"]


def test_the_quantised_forward_is_decode_of_encode_with_straight_through_gradients():
    torch.manual_seed(0)
    vae = MaskVAE((4, 4, 8, 8), num_embeddings=16, embedding_dim=8)
    masks, _ = batch(outlines(seed=0), 8)
    z = quantised_forward(vae, masks)[2]
    restart_dead_codes(vae._vq_vae._embedding, torch.zeros(16), z, torch.Generator().manual_seed(0))
    logits, vq_loss, z, codes = quantised_forward(vae, masks)  # codes drawn from encodings: many in use
    assert codes.unique().numel() > 8 and z.shape == (8 * 16, 8)
    assert torch.equal(codes.view(8, 16), vae.encode(masks))
    assert torch.allclose(logits, vae.decode(vae.encode(masks)), atol=1e-6)
    # the decoder's gradient reaches the encoder past the codebook lookup, and not the codebook
    logits.mean().backward(retain_graph=True)
    assert vae._vq_vae._embedding.grad is None
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for p in [*vae.encoder.parameters(), *vae.decoder.parameters()]
    )
    vae.zero_grad()
    vq_loss.backward()  # pulls codes and encodings together
    assert vae._vq_vae._embedding.grad is not None and vae._vq_vae._embedding.grad.abs().sum() > 0
    assert all(p.grad is None for p in vae.decoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.encoder.parameters())


def test_the_iou_is_of_the_decoded_inside_with_the_masks_inside_per_mask_and_kind():
    vae = MaskVAE((4, 4, 8, 8), num_embeddings=16, embedding_dim=8)
    last = vae.decoder[-1]
    assert isinstance(last, torch.nn.Conv2d) and last.bias is not None
    with torch.no_grad():  # every logit 1: all decoded inside
        last.weight.zero_()
        last.bias.fill_(1.0)
    masks, kinds = batch(outlines(seed=0), 2 * len(KINDS))
    iou, used = evaluate(vae, masks, kinds)
    expected = (masks >= 0.5).float().mean((1, 2))  # (B,): inside / all
    assert iou["all"] == pytest.approx(expected.mean().item())
    assert iou["square"] == 1.0 and iou["ring"] == pytest.approx(expected[[6, 14]].mean().item())
    assert list(iou) == ["all", *KINDS] and 1 <= used <= 16


def test_dead_codes_take_encodings_of_the_batch_and_live_ones_stay():
    codebook, z = torch.zeros(4, 3), torch.arange(30.0).view(10, 3)
    usage = torch.tensor([5.0, 0.5, 2.0, 0.0])
    assert restart_dead_codes(codebook, usage, z, torch.Generator().manual_seed(0)) == 2
    assert codebook[0].eq(0).all() and codebook[2].eq(0).all()
    assert all(any(torch.equal(codebook[k], row) for row in z) for k in (1, 3))
    assert usage.tolist() == [5.0, 1.0, 2.0, 1.0]


@pytest.mark.slow
def test_a_few_steps_lower_the_loss_and_the_file_reads_back_with_its_widths(tmp_path, capsys):
    out = tmp_path / "vae.safetensors"
    args = parse_args(["--out", str(out), "--steps", "60", "--log-every", "20", "--lr", "5e-3", *TINY])
    vae = train(args, (8, 8, 16, 16))
    losses = [float(v) for v in re.findall(r"reconstruction ([\d.]+)", capsys.readouterr().out)]
    assert len(losses) == 3 and losses[-1] < 0.85 * losses[0], losses
    vae.save_pretrained(out)
    loaded = MaskVAE.from_pretrained(out)
    assert [loaded.encoder[i].out_channels for i in (0, 2, 4, 6)] == [8, 8, 16, 16]
    assert loaded._vq_vae._embedding.shape == (16, 16)
    masks, _ = batch(outlines(seed=0, stream=HELD_OUT_STREAM), 8)
    assert torch.equal(loaded.decode(loaded.encode(masks)), vae.decode(vae.encode(masks)))


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up and imports
def test_the_command_writes_its_file_and_prints_the_held_out_iou_per_kind(tmp_path):
    out = tmp_path / "sub" / "vae.safetensors"
    args = ["--out", str(out), "--steps", "3", "--held-out", "16", *TINY]
    result = subprocess.run(
        [sys.executable, "-m", "paligemma.train_mask_vae", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert MaskVAE.from_pretrained(out)._vq_vae._embedding.shape == (16, 16)
    line = next(x for x in result.stdout.splitlines() if x.startswith("held-out reconstruction IoU"))
    assert all(re.search(rf"\b{kind} [01]\.\d{{4}}\b", line) for kind in ("all", *KINDS)), line
    assert re.search(r"held-out codes used: \d+/16", result.stdout)


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up and imports
def test_the_command_ends_a_bad_option_in_one_line(tmp_path):
    args = ["--out", str(tmp_path / "vae.safetensors"), "--widths", "8,16,32"]
    result = subprocess.run(
        [sys.executable, "-m", "paligemma.train_mask_vae", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert_one_line_error(result, "--widths takes 4 positive widths")


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["--widths", "8,x,32,64"], "--widths: '8,x,32,64' is not comma-separated integers"),
        (["--widths", "8,0,32,64"], "--widths takes 4 positive widths"),
        (["--steps", "0"], "--steps must be at least 1, got 0"),
        (["--batch-size", "-2"], "--batch-size must be at least 1, got -2"),
        (["--num-embeddings", "0"], "--num-embeddings must be at least 1"),
        (["--lr", "0"], "--lr must be above 0, got 0.0"),
        (["--out", "{tmp}/vae.pt"], "--out: {tmp}/vae.pt is not a .safetensors file name"),
        (["--out", "{tmp}/file/vae.safetensors"], "--out: cannot make the directory {tmp}/file"),
    ],
)
def test_bad_options_exit_with_a_line_naming_the_option(tmp_path, args, culprit):
    (tmp_path / "file").write_text("")
    args = [a.format(tmp=tmp_path) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "vae.safetensors")]
    with pytest.raises(SystemExit) as exit:
        main([*out, *args])
    assert str(exit.value.code).startswith("error: ") and culprit.format(tmp=tmp_path) in str(exit.value.code)
    assert "\n" not in str(exit.value.code) and not list(tmp_path.glob("*.safetensors"))


def test_the_shipped_mask_vae_reconstructs_held_out_masks():
    masks, kinds = batch(outlines(seed=0, stream=HELD_OUT_STREAM), 30 * len(KINDS))
    iou, used = evaluate(MaskVAE.from_pretrained(ASSET), masks, kinds)
    assert iou["all"] >= 0.90 and all(iou[kind] >= 0.90 for kind in SHAPES), iou
    assert used >= 64
