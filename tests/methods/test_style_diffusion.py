import pytest
import torch

from editsweep.diffusion.attention import P2PAttnProcessor, P2PControl, controlled_unet
from editsweep.diffusion.ddim import make_schedule, predict_noise
from editsweep.diffusion.image_encoder import ImageEncoderLoadError, load_image_encoder
from editsweep.diffusion.inputs import images_tensor
from editsweep.diffusion.p2p import p2p_latents
from editsweep.methods.base import get_method_class
from editsweep.methods.style_diffusion import (
    StyleDiffusionEditParams,
    StyleDiffusionParams,
    apply_mapping,
    init_mapping,
    value_inputs,
)

STEPS = 10
PARAMS = StyleDiffusionParams(steps=STEPS, inner_steps=5, image_encoder="tiny")


def relative_errors(latents, reference):
    return ((latents - reference) ** 2).flatten(1).mean(1) / reference.flatten(1).var(1)


@pytest.fixture(scope="module")
def method():
    return get_method_class("style_diffusion")()


@pytest.fixture(scope="module")
def inputs(tiny_backbone, generated_samples):
    return tiny_backbone.encode_images(images_tensor(generated_samples, tiny_backbone.device))


@pytest.fixture(scope="module")
def trained(tiny_backbone, generated_samples, method):
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    return method.invert(tiny_backbone, generated_samples, PARAMS, generators)


def reconstruct(backbone, samples, state, points):
    null = backbone.encode_text([""] * len(samples))
    return p2p_latents(
        backbone, samples, points, state["noise_latents"], make_schedule(backbone, STEPS), null, 7.5,
        values=value_inputs(state, points, STEPS),
    )  # fmt: skip


def test_trained_mapping_beats_its_untrained_start(tiny_backbone, generated_samples, method, trained, inputs):
    """Measured on 3 images, 10 steps, 5 inner steps at guidance 7.5, relative latent MSE:
    0.0065-0.0094 trained, 0.38-0.46 untrained, 0.016-0.029 plain DDIM (null text, text values)."""
    assert trained["value_scale"].shape == (3, STEPS, 77, 32)
    untrained = method.invert(
        tiny_backbone, generated_samples, PARAMS.model_copy(update={"inner_steps": 0}),
        [torch.Generator().manual_seed(i) for i in range(3)],
    )  # fmt: skip
    point = [StyleDiffusionEditParams()]
    learned = relative_errors(reconstruct(tiny_backbone, generated_samples, trained, point)[0], inputs)
    start = relative_errors(reconstruct(tiny_backbone, generated_samples, untrained, point)[0], inputs)
    assert (learned < 0.1 * start).all()
    null = tiny_backbone.encode_text([""] * 3)
    schedule = make_schedule(tiny_backbone, STEPS)
    ddim, _ = p2p_latents(tiny_backbone, generated_samples, point, trained["noise_latents"], schedule, null, 7.5)
    assert learned.mean() < 0.6 * relative_errors(ddim, inputs).mean()


def test_p2plus_with_identical_prompts_reproduces_the_reconstruction(tiny_backbone, generated_samples, trained, inputs):
    same = StyleDiffusionEditParams(value_replace=1.0, uncond_self_replace=0.5)
    source, target = reconstruct(tiny_backbone, generated_samples, trained, [same])
    assert torch.allclose(target, source, atol=1e-4)
    assert (relative_errors(target, inputs) < 0.02).all()
    # Target rows that drop the learned values after 2 of 10 steps no longer reconstruct.
    early = StyleDiffusionEditParams(value_replace=0.2, uncond_self_replace=0.5)
    _, dropped = reconstruct(tiny_backbone, generated_samples, trained, [early])
    assert (dropped - source).abs().max() > 100 * (target - source).abs().max()


def test_p2plus_replaces_unconditional_self_attention_only_in_its_window():
    control = P2PControl(
        n_source=1,
        source_index=torch.tensor([0, 0]),
        mapper=torch.eye(4).expand(2, 4, 4),
        alphas=torch.ones(2, 4),
        equalizer=torch.ones(2, 4),
        cross_steps=torch.tensor([0, 0]),
        self_steps=torch.tensor([0, 0]),
        uncond_self_steps=torch.tensor([3, 1]),
    )
    probs = torch.rand(6, 2, 16, 16)  # [uncond: source, 2 targets; cond: source, 2 targets]
    control.step = 2
    out = control(probs.clone(), is_cross=False)
    assert torch.equal(out[1], probs[0])  # target 0: step 2 < 3, replaced by its source
    assert torch.equal(out[2], probs[2])  # target 1: window of 1 step is over
    assert torch.equal(out[3:], probs[3:])  # the conditional half has its own (closed) windows
    cross = torch.rand(6, 2, 16, 4)
    assert torch.equal(control(cross.clone(), is_cross=True)[:3], cross[:3])


def test_text_values_give_the_plain_unet_output(tiny_backbone):
    unet = tiny_backbone.unet
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = tiny_backbone.encode_text(["a photo of a cat", "a bowl of fruit"])
    t = torch.tensor(500)
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=cond).sample
        with controlled_unet(unet, lambda probs, is_cross: probs):
            hooked = unet(x, t, encoder_hidden_states=cond).sample
            injected = predict_noise(tiny_backbone, x, t, cond, values=cond)
            other = predict_noise(tiny_backbone, x, t, cond, values=cond.flip(0))
            with pytest.raises(ValueError, match="value_states"):
                predict_noise(tiny_backbone, x, t, cond, values=cond[:1])
    assert torch.equal(injected, hooked)
    assert torch.allclose(injected, plain, atol=1e-5)  # manual attention vs SDPA: rounding only
    assert (other - injected).abs().max() > 1e-3


def test_worker_unet_unchanged_and_no_grads(tiny_backbone, generated_samples, method):
    before = {k: v.clone() for k, v in tiny_backbone.unet.state_dict().items()}
    processors = {k: type(v) for k, v in tiny_backbone.unet.attn_processors.items()}
    params = StyleDiffusionParams(steps=3, inner_steps=3, image_encoder="tiny")
    state = method.invert(tiny_backbone, generated_samples[:1], params, [torch.Generator().manual_seed(0)])
    assert all(torch.equal(v, before[k]) for k, v in tiny_backbone.unet.state_dict().items())
    assert all(not p.requires_grad and p.grad is None for p in tiny_backbone.unet.parameters())
    assert all(not v.requires_grad and v.grad_fn is None for v in state.values())
    assert {k: type(v) for k, v in tiny_backbone.unet.attn_processors.items()} == processors
    assert not any(isinstance(v, P2PAttnProcessor) for v in tiny_backbone.unet.attn_processors.values())


def test_batch_equals_images_one_by_one(tiny_backbone, generated_samples, method):
    params = StyleDiffusionParams(steps=3, inner_steps=4, image_encoder="tiny")
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    batch = method.invert(tiny_backbone, generated_samples, params, generators)
    for i, sample in enumerate(generated_samples):
        alone = method.invert(tiny_backbone, [sample], params, [torch.Generator().manual_seed(i)])
        # Adam divides by the gradient's running RMS, which lifts float-rounding differences between
        # batched and single UNet calls (~1e-7) to a mean of ~1e-3 on values of size ~0.5-1 (measured
        # max mean 2e-3 relative); another image's network would differ by O(1).
        for key in ("value_scale", "value_shift"):
            difference = (batch[key][i] - alone[key][0]).abs().mean()
            assert difference < 1e-2 * alone[key].abs().mean()
    out = method.edit(tiny_backbone, batch, generated_samples, params, [StyleDiffusionEditParams()] * 2, [])
    assert len(out) == 2 and out[0].shape == (3, 3, 64, 64)


def test_lr_decay_that_reaches_zero_is_an_error(tiny_backbone, generated_samples, method):
    with pytest.raises(ValueError, match="lr_decay 0.5 makes the learning rate reach 0 before step 10"):
        method.invert(tiny_backbone, generated_samples, StyleDiffusionParams(steps=10, lr_decay=0.5), [])


def test_image_encoder_offline_error_names_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ImageEncoderLoadError, match=r"'openai/clip-vit-base-patch16'.*huggingface-cli download"):
        load_image_encoder("openai/clip-vit-base-patch16")
    with pytest.raises(ImageEncoderLoadError, match="preprocessor_config.json"):
        load_image_encoder(str(tmp_path))


def test_tiny_image_encoder_is_seeded_cached_and_flagged():
    encoder = load_image_encoder("tiny")
    assert encoder is load_image_encoder("tiny", "cpu")
    assert encoder.weights_source == "tiny:random"
    assert encoder.n_tokens == 17 and encoder.width == 32
    reseeded = load_image_encoder("tiny", seed=1)
    assert not torch.equal(next(encoder.model.parameters()), next(reseeded.model.parameters()))


def test_image_encoder_loads_a_local_safetensors_folder(tmp_path, generated_samples):
    tiny = load_image_encoder("tiny")
    tiny.model.save_pretrained(tmp_path, safe_serialization=True)
    tiny.processor.save_pretrained(tmp_path)
    loaded = load_image_encoder(str(tmp_path))
    assert (tmp_path / "model.safetensors").exists() and not loaded.random_weights
    images = [s.image for s in generated_samples]
    assert torch.equal(loaded.tokens(images), tiny.tokens(images))


def test_each_image_has_its_own_mapping_and_a_projection_when_widths_differ():
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    mapping = init_mapping(n_tokens=5, width=48, dim=32, length=77, generators=generators, device=torch.device("cpu"))
    tokens = torch.randn(2, 5, 48, generator=torch.Generator().manual_seed(9))
    scale, shift = apply_mapping(mapping, tokens)
    assert scale.shape == shift.shape == (2, 77, 32)
    changed = tokens.clone()
    changed[1] += 1
    scale2, _ = apply_mapping(mapping, changed)
    assert torch.equal(scale2[0], scale[0]) and not torch.allclose(scale2[1], scale[1])
    assert "proj_w" not in init_mapping(5, 32, 32, 77, generators, torch.device("cpu"))


def test_rows_name_the_image_encoder_and_flag_the_random_preset():
    cls = get_method_class("style_diffusion")
    assert cls.model_sources(cls.InvertParams(image_encoder="tiny")) == {"image_encoder": "tiny:random"}
    assert cls.model_sources(cls.InvertParams()) == {"image_encoder": "openai/clip-vit-base-patch16"}
