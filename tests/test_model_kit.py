"""The demo model kit: stock loaders load it, the prompts reach the model, and it draws the asked digit."""
from __future__ import annotations

import pytest
import torch

from cli import model_kit

pytestmark = pytest.mark.host


def test_clip_weights_are_the_same_on_every_machine():
    # SplitMix64 of (index, seed) in integer arithmetic: fixed by the algorithm, not by torch's RNG. The MMDiT learned
    # these exact CLIP weights, so a change here would silently break the kit: pin them.
    u = model_kit._hash_uniform(5, 7)
    assert torch.all((u >= 0) & (u < 1))
    assert torch.equal(u, model_kit._hash_uniform(5, 7))
    assert not torch.equal(u, model_kit._hash_uniform(5, 8))
    assert [round(float(x), 6) for x in u] == [0.926877, 0.065644, 0.596588, 0.591906, 0.400305]


@pytest.fixture(scope="module")
def kit(comfy, base_dir):
    paths = model_kit.ensure_demo_models(base_dir / "models")
    n = comfy.NODE_CLASS_MAPPINGS
    loaders = model_kit.node_inputs()
    model = n["UNETLoader"]().load_unet(**loaders["UNETLoader"])[0]
    clip = n["CLIPLoader"]().load_clip(**loaders["CLIPLoader"])[0]
    vae = n["VAELoader"]().load_vae(**loaders["VAELoader"])[0]
    return paths, model, clip, vae


def test_stock_loaders_read_the_kit(comfy, kit):
    from comfy import model_base

    paths, model, clip, vae = kit
    assert isinstance(model.model, model_base.SD3)
    assert vae.latent_channels == 16
    cond = comfy.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(clip, model_kit.PROMPT.format(3))[0]
    assert cond[0][0].shape == (1, 77, 4096) and cond[0][1]["pooled_output"].shape == (1, 2048)
    other = comfy.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(clip, model_kit.PROMPT.format(4))[0]
    assert not torch.allclose(cond[0][1]["pooled_output"], other[0][1]["pooled_output"], atol=1e-3)
    # Idempotent, and never overwrites a file that is already there.
    before = {k: p.stat().st_mtime_ns for k, p in paths.items()}
    again = model_kit.ensure_demo_models(paths["vae"].parent.parent)
    assert {k: p.stat().st_mtime_ns for k, p in again.items()} == before


def test_vae_reconstructs_real_digits(comfy, kit):
    from benchmarks.repro import data
    from benchmarks.repro.metrics import psnr

    *_, vae = kit
    images, _ = data.load_digits()
    pixels = images[:16].movedim(1, -1)
    back = vae.decode(vae.encode(pixels)).float()
    assert psnr(back, pixels, 1.0) > 28.0


@pytest.mark.usefixtures("one_thread")
def test_samples_show_the_prompted_digit(comfy, kit):
    from benchmarks.repro import data
    from benchmarks.repro.metrics import DigitJudge

    _, model, clip, vae = kit
    n = comfy.NODE_CLASS_MAPPINGS
    images, labels = data.load_digits()
    train, _ = data.split(labels)
    judge = DigitJudge(images[train], labels[train])
    negative = n["CLIPTextEncode"]().encode(clip, "")[0]
    size = model_kit.IMAGE_SIZE // 8
    with torch.inference_mode():  # as the host's executor runs nodes
        drawn = [sample_digit(n, model, clip, vae, negative, digit, size) for digit in range(10)]
    wanted = torch.arange(10).repeat_interleave(2)
    assert judge.accuracy(torch.cat(drawn), wanted) >= 0.7


def sample_digit(n, model, clip, vae, negative, digit: int, size: int) -> torch.Tensor:
    """Two 10-step samples of "a handwritten digit <digit>" through the stock nodes, decoded."""
    positive = n["CLIPTextEncode"]().encode(clip, model_kit.PROMPT.format(digit))[0]
    latent = {"samples": torch.zeros((2, 16, size, size))}
    out = n["KSampler"]().sample(model, 100 + digit, 10, 1.0, "euler", "simple", positive, negative, latent)[0]
    return n["VAEDecode"]().decode(vae, out)[0]
