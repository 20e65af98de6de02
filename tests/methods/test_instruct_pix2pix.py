"""`instruct_pix2pix` / `magicbrush` (methods/instruct_pix2pix.py): batching, instructions, backbone
checks, and the paper's image-guidance property on a denoiser whose answer is known."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from editsweep.bench.spec import SpecError, load_spec
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import load_backbone
from editsweep.diffusion.ddim import make_schedule
from editsweep.diffusion.inputs import images_tensor
from editsweep.diffusion.instruct_pix2pix import ip2p_sample
from editsweep.methods.base import Params, get_method_class
from editsweep.methods.instruct_pix2pix import InstructPix2PixParams, instruction


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny-ip2p")


@pytest.fixture(scope="module")
def method():
    return get_method_class("instruct_pix2pix")()


@pytest.fixture(scope="module")
def samples(generated_samples):
    return [Sample(s.id, s.image, "a blue bird in the sky", s.source_prompt) for s in generated_samples[:2]]


class GaussianDenoiser(torch.nn.Module):
    """A stand-in for a trained InstructPix2Pix UNet whose answer is known: the exact posterior-mean
    denoiser of x_0 ~ N(s * c_I + d, 0.1^2) given the image latent c_I (s: the VAE's scaling factor,
    the trained model's convention that the output latent is scaled, the conditioning not) and of
    x_0 ~ N(d, 1) without it (c_I = 0), d a shift by the text embedding's mean."""

    def __init__(self, alphas_cumprod: torch.Tensor, scaling_factor: float) -> None:
        super().__init__()
        self.alphas = alphas_cumprod.float()
        self.scaling_factor = scaling_factor
        self.config = SimpleNamespace(in_channels=8, out_channels=4, sample_size=8)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def forward(self, sample, t, encoder_hidden_states, cross_attention_kwargs=None):
        x, c = sample[:, :4], sample[:, 4:]
        a = self.alphas[t]
        has_image = (c.flatten(1).abs().sum(1) > 0).view(-1, 1, 1, 1)
        shift = 2.0 * encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        mean = torch.where(has_image, self.scaling_factor * c, torch.zeros_like(c)) + shift
        var = torch.where(has_image, torch.tensor(0.1**2), torch.tensor(1.0))
        x0 = mean + a**0.5 * var / (a * var + 1 - a) * (x - a**0.5 * mean)
        return SimpleNamespace(sample=(x - a**0.5 * x0) / (1 - a) ** 0.5)


def test_image_guidance_at_text_guidance_1_pulls_the_edit_onto_the_input(backbone, method, samples, generators):
    """With s_T = 1, raising s_I from 1 to 8 brings the edit monotonically onto the input: the latent
    error (relative to the input latent's variance) measured 5.3e-3, 1.8e-4, 5.0e-5, 7.0e-6 at
    s_I = 1, 2, 4, 8 (20 DDIM steps); the decoded edit's MSE to the VAE round trip of the input
    falls from 2.5e-3 to 1.2e-6. (Far beyond, s_I >= 32, 20 DDIM steps diverge: not asserted.)"""
    oracle = dataclasses.replace(
        backbone, unet=GaussianDenoiser(backbone.scheduler.alphas_cumprod, backbone.vae.config.scaling_factor)
    )
    state = method.invert(oracle, samples, Params(), generators(2))
    clean = oracle.encode_images(images_tensor(samples, oracle.device))
    cond, uncond = oracle.encode_text(["make it a blue bird"] * 2), oracle.encode_text(["", ""])
    scales = (1.0, 2.0, 4.0, 8.0)
    errors = []
    for s in scales:
        latents = ip2p_sample(
            oracle, state["noise"], make_schedule(oracle, 20), state["image_latents"], cond, uncond,
            torch.ones(2), torch.full((2,), s),
        )
        errors.append(((latents - clean) ** 2).mean().item() / clean.var().item())
    assert errors == sorted(errors, reverse=True)
    assert errors[0] > 1e-3 and errors[-1] < 1e-4
    points = [InstructPix2PixParams(steps=20, guidance=1.0, image_guidance=s) for s in (1.0, 8.0)]
    low, high = method.edit(oracle, state, samples, Params(), points, generators(2))
    round_trip = oracle.decode(clean)
    assert ((high - round_trip) ** 2).mean() < 1e-2 * ((low - round_trip) ** 2).mean()


def test_points_batched_equal_points_alone(backbone, method, samples, generators):
    state = method.invert(backbone, samples, Params(), generators(2))
    points = [
        InstructPix2PixParams(steps=4, guidance=7.5, image_guidance=1.5),
        InstructPix2PixParams(steps=4, guidance=3.0, image_guidance=1.0, instruction="template"),
        InstructPix2PixParams(steps=3),
    ]
    together = method.edit(backbone, state, samples, Params(), points, generators(2))
    assert [tuple(t.shape) for t in together] == [(2, 3, 64, 64)] * 3
    for point, batched in zip(points, together):
        (alone,) = method.edit(backbone, state, samples, Params(), [point], generators(2))
        torch.testing.assert_close(batched, alone, rtol=0, atol=1e-4)
    (first,) = method.edit(backbone, method.invert(backbone, samples[:1], Params(), generators(1)), samples[:1],
                           Params(), points[:1], generators(1))
    torch.testing.assert_close(first, together[0][:1], rtol=0, atol=1e-4)


def test_invert_encodes_the_unscaled_mode_and_draws_noise_per_sample(backbone, method, samples, generators):
    state = method.invert(backbone, samples, Params(), generators(2))
    scaled = backbone.encode_images(images_tensor(samples, backbone.device))
    torch.testing.assert_close(state["image_latents"] * backbone.vae.config.scaling_factor, scaled)
    expected = torch.randn(4, 8, 8, generator=generators(2)[1])
    assert torch.equal(state["noise"][1], expected)


def test_instruction_from_meta_or_template():
    image = None
    auto, template = InstructPix2PixParams(), InstructPix2PixParams(instruction="template")
    given = Sample("a", image, "a dog", "a cat", {"instruction": "make the cat a dog"})
    assert instruction(given, auto) == "make the cat a dog"
    assert instruction(given, template) == "turn the cat into dog"
    pie = Sample("b", image, "a dog", "a cat", {"editing_instruction": "change the cat to a dog"})
    assert instruction(pie, auto) == "change the cat to a dog"
    blended = Sample("c", image, "a red car", "a blue car", {"blended_words": ["blue", "red"]})
    assert instruction(blended, auto) == "turn the blue into red"
    added = Sample("d", image, "a cat wearing a hat", "a cat")
    assert instruction(added, auto) == "make it a cat wearing a hat"
    custom = InstructPix2PixParams(template="replace {source_word} with {target_word}")
    assert instruction(blended, custom) == "replace blue with red"
    with pytest.raises(ValueError, match="unknown template fields"):
        InstructPix2PixParams(template="make it {colour}")


def spec(method: str, backbone: str) -> dict:
    return {
        "name": "ip2p",
        "backbone": {"name": backbone},
        "datasets": [{"name": "synthetic", "params": {"n": 1}}],
        "methods": [{"name": method}],
        "metrics": {},
    }


@pytest.mark.parametrize("backbone", ["tiny", "toy", "sd-v1-arch", "CompVis/stable-diffusion-v1-4"])
def test_text_to_image_backbones_are_refused_before_loading(backbone):
    with pytest.raises(SpecError) as err:
        load_spec(spec("instruct_pix2pix", backbone))
    message = str(err.value)
    assert f"instruct_pix2pix cannot run on backbone {backbone!r}" in message
    assert "4 input channels" in message and "tiny-ip2p" in message and "timbrooks/instruct-pix2pix" in message


def test_each_method_refuses_the_other_ones_weights():
    with pytest.raises(SpecError, match="holds instruct_pix2pix's weights: use method instruct_pix2pix"):
        load_spec(spec("magicbrush", "timbrooks/instruct-pix2pix"))
    with pytest.raises(SpecError, match="holds magicbrush's weights: use method magicbrush"):
        load_spec(spec("instruct_pix2pix", "vinesmsuic/magicbrush-jul7"))
    for method, backbone in [
        ("instruct_pix2pix", "timbrooks/instruct-pix2pix"),
        ("magicbrush", "vinesmsuic/magicbrush-jul7"),
        ("magicbrush", "tiny-ip2p"),
        ("instruct_pix2pix", "someone/unknown-model"),  # checked by the worker once loaded
    ]:
        load_spec(spec(method, backbone))


def test_a_loaded_text_to_image_unet_is_a_clear_error(tiny_backbone, method, samples, generators):
    with pytest.raises(ValueError, match="instruct_pix2pix cannot run on backbone 'tiny': its UNet takes 4 input"):
        method.invert(tiny_backbone, samples, Params(), generators(2))


def save_folder(backbone, folder):
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        getattr(backbone, part).save_pretrained(folder / part)
    (folder / "model_index.json").write_text("{}")
    return str(folder)


def test_unknown_folders_are_checked_by_the_worker_for_this_method_only(tmp_path, tiny_backbone, backbone):
    """Folders are not known before loading: a text-to-image one fails this method's tasks with the
    message, while other methods' tasks on it, and this method on an instruction model's folder, run."""
    from editsweep.bench.plan import plan
    from editsweep.bench.store import RunStore
    from editsweep.bench.worker import SweepWorker

    text_to_image = save_folder(tiny_backbone, tmp_path / "sd")
    instruct = save_folder(backbone, tmp_path / "ip2p")
    raw = spec("instruct_pix2pix", text_to_image)
    raw["backbone"] = [{"name": text_to_image}, {"name": instruct}]
    raw["methods"] = [{"name": "instruct_pix2pix", "edit": {"steps": 2}}, {"name": "copy"}]
    sweep = load_spec(raw)
    store = RunStore(str(tmp_path / "run"))
    worker = SweepWorker(sweep, str(tmp_path / "run"), "run-ip2p")
    _, units = plan(sweep, set())
    for unit in units:
        store.write_rows(worker.process(unit).rows)
    rows = store.read_results().set_index(["method", "backbone"])
    assert len(rows) == 4
    failed = rows.loc[("instruct_pix2pix", text_to_image)]
    assert failed["status"] == "error"
    expected = f"instruct_pix2pix cannot run on backbone {text_to_image!r}: its UNet takes 4 input channels"
    assert expected in failed["error"]
    for key in [("instruct_pix2pix", instruct), ("copy", text_to_image), ("copy", instruct)]:
        assert rows.loc[key, "status"] == "ok", rows.loc[key, "error"]
    assert f"backbone={instruct}" in rows.loc[("instruct_pix2pix", instruct), "weights"]


def test_the_sdxl_variant_has_its_pipelines_defaults_and_backbones():
    """`instruct_pix2pix_sdxl`: the SDXL pipeline's text guidance 5.0; SDXL instruction models only."""
    cls = get_method_class("instruct_pix2pix_sdxl")
    assert cls.families == ("sdxl",) and cls.EditParams().guidance == 5.0 and cls.EditParams().steps == 100
    for backbone in ("tiny-sdxl-ip2p", "diffusers/sdxl-instructpix2pix-768"):
        load_spec(spec("instruct_pix2pix_sdxl", backbone))
    with pytest.raises(SpecError, match=r"cannot run on backbone 'tiny-sdxl' .*'tiny-sdxl-ip2p'"):
        load_spec(spec("instruct_pix2pix_sdxl", "tiny-sdxl"))
    with pytest.raises(SpecError, match="instruct_pix2pix_sdxl runs on backbone families sdxl, not 'sd'"):
        load_spec(spec("instruct_pix2pix_sdxl", "tiny-ip2p"))
    with pytest.raises(SpecError, match="instruct_pix2pix runs on backbone families sd, not 'sdxl'"):
        load_spec(spec("instruct_pix2pix", "diffusers/sdxl-instructpix2pix-768"))
