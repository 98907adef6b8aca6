"""GlanceTrainLoRA's input handling: odd images, wrong conditioning, bad numbers and names, NaN loss, interrupts."""
from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch

from benchmarks import models as gm
from glance_nodes import train

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("one_thread")]


def loras(base_dir):
    return base_dir / "models" / "loras"


def load(base_dir, name):
    return safetensors.torch.load_file(loras(base_dir) / name)


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_image_variants_train_like_rgb(comfy, base_dir):
    rgb = gm.sample_image(64)
    gray = rgb.mean(-1, keepdim=True)
    _, ref, _ = train(comfy, "inputs/rgb", image=rgb)
    _, rgba, _ = train(comfy, "inputs/rgba", image=torch.cat([rgb, torch.rand_like(rgb[..., :1])], -1))
    assert same(load(base_dir, ref), load(base_dir, rgba))  # alpha dropped
    _, g1, _ = train(comfy, "inputs/gray1", image=gray)
    _, g3, _ = train(comfy, "inputs/gray3", image=gray.expand(-1, -1, -1, 3).contiguous())
    assert same(load(base_dir, g1), load(base_dir, g3))  # grayscale repeated to RGB


def test_odd_size_is_cropped_to_multiples(comfy, base_dir, pack):
    _, name, _ = train(comfy, "inputs/odd", image=torch.rand((1, 23, 37, 3)))
    meta = safetensors.safe_open(str(loras(base_dir) / name), "pt").metadata()
    assert meta["glance.resolution"] == "[64, 32]"  # 37x23 -> long side 64, floored to multiples of 32
    pixels = pack("training.data").prepare_image(torch.rand((1, 1000, 333, 3)), 1024, 32)
    assert pixels.shape == (1, 1024, 320, 3)


@pytest.mark.parametrize("image, words", [
    (torch.zeros((1, 0, 0, 3)), "empty"),
    (torch.zeros((0, 64, 64, 3)), "empty"),
    (torch.rand((2, 64, 64, 3)), "ONE image"),
    (torch.rand((1, 64, 2, 3)), "too thin"),
    (torch.rand((1, 64, 64, 5)), "channels"),
    (torch.full((1, 64, 64, 3), float("nan")), "NaN"),
])
def test_bad_images_are_refused(comfy, base_dir, image, words):
    with pytest.raises(ValueError, match=words) as err:
        train(comfy, "inputs/bad_image", image=image)
    assert str(err.value).startswith("image:")
    assert not (loras(base_dir) / "inputs" / "bad_image.safetensors").exists()


def test_conditioning_for_another_model_is_refused(comfy):
    with pytest.raises(ValueError, match=r"^positive:.*pooled"):
        train(comfy, "inputs/cond_a", positive=gm.conditioning("qwen", 1))  # FLUX needs pooled_output
    wide = [[torch.randn((1, 8, 64)), {}]]
    with pytest.raises(ValueError, match=r"^positive:.*width 64.*takes 48"):
        train(comfy, "inputs/cond_b", model=gm.make_qwen(), kind="qwen", positive=wide)
    with pytest.raises(ValueError, match=r"^vae:.*4-channel"):
        train(comfy, "inputs/cond_c", vae=gm.make_tiny_vae(latent_channels=4))


@pytest.mark.parametrize("field, value", [("rank", 0), ("steps", 0), ("learning_rate", 0.0), ("alpha", -2.0)])
def test_bad_numbers_are_refused(comfy, field, value):
    with pytest.raises(ValueError, match=f"^{field}:"):
        train(comfy, "inputs/bad_number", **{field: value})


@pytest.mark.parametrize("text", ["", "abc, 900", "1200", "0"])
def test_bad_custom_timesteps_are_refused(comfy, text):
    with pytest.raises(ValueError, match="^timesteps:"):
        train(comfy, "inputs/bad_t", phase="custom", timesteps=text)


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "/tmp/glance_abs", "C:\\loras\\x", "", "dir/"])
def test_unsafe_save_names_are_refused(comfy, base_dir, name):
    before = set(base_dir.rglob("*.safetensors"))
    with pytest.raises(ValueError, match="^save_name:"):
        train(comfy, name)
    assert set(base_dir.rglob("*.safetensors")) == before
    assert not (base_dir / "models" / "escape.safetensors").exists()
    assert not Path("/tmp/glance_abs.safetensors").exists()


def test_existing_file_is_not_overwritten(comfy, base_dir):
    _, name, _ = train(comfy, "inputs/exists")
    before = (loras(base_dir) / name).read_bytes()
    with pytest.raises(FileExistsError, match="^save_name:.*already exists"):
        train(comfy, "inputs/exists", seed=7)
    assert (loras(base_dir) / name).read_bytes() == before


def test_nan_loss_stops_without_a_file(comfy, base_dir):
    model = gm.make_flux()
    with torch.no_grad():
        model.model.diffusion_model.final_layer.linear.weight[0, 0] = float("nan")  # a broken checkpoint
    with pytest.raises(RuntimeError, match="loss is nan.*no file was written"):
        train(comfy, "inputs/nan/never", model=model)
    folder = loras(base_dir) / "inputs" / "nan"
    assert not folder.exists() or not any(folder.iterdir())


def test_interrupt_saves_nothing_and_restores_the_model(comfy, base_dir):
    import comfy.model_management as mm

    model = gm.make_qwen()
    dm = model.model.diffusion_model
    modules = [n for n, _ in dm.named_modules()]
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            train(comfy, "inputs/interrupted", model=model, kind="qwen", gradient_checkpointing=True)
    finally:
        mm.interrupt_current_processing(False)
    assert not (loras(base_dir) / "inputs" / "interrupted.safetensors").exists()
    assert [n for n, _ in dm.named_modules()] == modules


def test_non_flow_model_is_refused(comfy, pack):
    import comfy.model_sampling

    model = gm.make_flux()
    model.add_object_patch("model_sampling", comfy.model_sampling.ModelSamplingDiscrete())
    with pytest.raises(ValueError, match="^model:.*flow-matching"):
        pack("training.recipes").detect_recipe(model)
