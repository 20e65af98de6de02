"""`p_plus`: the inversion's loss falls, one shared token is plain textual inversion, identical
per-layer tokens edit as one token, the per-layer prompts matter, batch independence, and its checks."""

import dataclasses

import pytest
import torch

from editsweep.datasets.images import fit_square
from editsweep.datasets.shapes import ShapesDataset
from editsweep.diffusion.backbone import load_backbone
from editsweep.diffusion.finetuning import denoising_losses
from editsweep.diffusion.inputs import images_tensor
from editsweep.diffusion.per_layer import cross_attention_layers, inserted_token, per_layer_conditioning
from editsweep.methods.base import get_method_class
from editsweep.methods.p_plus import invert_tokens, layer_states, token_ids


@pytest.fixture
def method():
    return get_method_class("p_plus")()


@pytest.fixture
def cats(generated_samples):
    """The generated cat, and the car as a second sample; each target prompt keeps its object word."""
    cat, car = generated_samples[0], generated_samples[1]
    return [
        dataclasses.replace(cat, source_prompt="a photo of a cat", target_prompt="a photo of a sleeping cat"),
        dataclasses.replace(car, source_prompt="a red car on a road", target_prompt="a blue car on a road"),
    ]


def token_setup(backbone, samples, per_layer=True):
    latents = backbone.encode_images(images_tensor(samples, backbone.device))
    token = backbone.tokenizer("sks", add_special_tokens=False).input_ids[0]
    table = backbone.text_encoder.get_input_embeddings().weight
    variants = len(cross_attention_layers(backbone.unet)) if per_layer else 1
    init = table[token].float().expand(len(samples), variants, -1)
    return latents, token, init, ["a photo of a sks"] * len(samples)


def test_the_inversion_lowers_the_denoising_loss_on_the_toy_world():
    """On the trained toy backbone, from the object word's embedding, 40 steps at the paper's learning
    rate: on fixed draws (16 noises and timesteps) the learned tokens denoise the input better (by
    about 30% here; the random tiny UNet barely listens to its text, so it is not used)."""
    toy = load_backbone("toy")
    dataset = ShapesDataset({"n": 2, "edit_types": ["color"], "seed": 1})
    sample = dataset.load(dataset.sample_ids()[0])
    sample.image = fit_square(sample.image, toy.resolution)
    latents, token, _, prompts = token_setup(toy, [sample])
    star = toy.tokenizer("star", add_special_tokens=False).input_ids[0]
    layers = len(cross_attention_layers(toy.unet))
    init = toy.text_encoder.get_input_embeddings().weight[star].float().expand(1, layers, -1)
    tokens, losses = invert_tokens(toy, latents, init, prompts, token, [torch.Generator().manual_seed(0)], 40, 5e-3)
    assert len(losses) == 40 and not torch.equal(tokens, init)

    def held_out(t):
        with torch.no_grad(), per_layer_conditioning(toy.unet) as states:
            states.cond = layer_states(toy, prompts, t, token).repeat(16, 1, 1, 1)
            draws = [torch.Generator().manual_seed(100 + i) for i in range(16)]
            return denoising_losses(toy, latents.repeat(16, 1, 1, 1), states.cond[:, 0], draws).mean()

    assert held_out(tokens) < 0.8 * held_out(init)


def test_one_shared_token_is_plain_textual_inversion(tiny_backbone, cats, generators):
    """`per_layer: false` (one token for every layer, through the per-layer processors) learns what
    textual inversion learns with the ordinary UNet call: the same Adam steps on the same draws."""
    backbone = tiny_backbone
    latents, token, init, prompts = token_setup(backbone, cats[:1], per_layer=False)
    ours, _ = invert_tokens(backbone, latents, init, prompts, token, generators(1), 10, 5e-2)

    vector = init[:, 0].clone().requires_grad_(True)
    optimizer = torch.optim.Adam([vector], lr=5e-2)
    streams = generators(1)
    ids = token_ids(backbone, prompts)
    with torch.enable_grad(), inserted_token(backbone.text_encoder, token) as holder:
        for _ in range(10):
            holder.vectors = vector
            cond = backbone.text_encoder(ids)[0]
            loss = denoising_losses(backbone, latents, cond, streams).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    # the per-layer path sums the token's gradient over layers in another order
    torch.testing.assert_close(ours[:, 0], vector.detach(), atol=1e-5, rtol=0)


def test_identical_per_layer_tokens_edit_as_one_token_and_the_layers_prompts_matter(
    tiny_backbone, cats, method, generators
):
    backbone = tiny_backbone
    invert = method.InvertParams(steps=3)
    state = method.invert(backbone, cats, invert, generators(2))
    layers = len(cross_attention_layers(backbone.unet))
    assert state["tokens"].shape == (2, layers, backbone.text_encoder.get_input_embeddings().embedding_dim)
    shared = {"latents": state["latents"], "tokens": state["tokens"][:, :1]}
    copies = {"latents": state["latents"], "tokens": state["tokens"][:, :1].repeat(1, layers, 1)}
    points = [method.EditParams(steps=5, target_layers=mode) for mode in ("all", "coarse", "fine")]
    one = method.edit(backbone, shared, cats, invert, points, generators(2))
    many = method.edit(backbone, copies, cats, invert, points, generators(2))
    for a, b in zip(one, many, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # one encoding expanded vs 4 encoded rows
    assert (one[0] - one[1]).abs().max() > 1e-3 and (one[1] - one[2]).abs().max() > 1e-3

    for b, sample in enumerate(cats):
        alone_state = method.invert(backbone, [sample], invert, generators(2)[b : b + 1])
        torch.testing.assert_close(alone_state["tokens"][0], state["tokens"][b], atol=1e-5, rtol=0)
        # the edit of a sample alone from its tokens in the batch: the tokens learned alone agree to
        # 1e-5, which guidance 7.5 and the random decoder amplify to ~7e-3 in pixels
        own = {"latents": state["latents"][b : b + 1], "tokens": copies["tokens"][b : b + 1]}
        alone = method.edit(backbone, own, [sample], invert, points[:1], generators(2)[b : b + 1])
        torch.testing.assert_close(alone[0][0], many[0][b], atol=1e-4, rtol=0)


def test_strength_below_1_starts_from_the_noised_input(tiny_backbone, cats, method, generators):
    backbone = tiny_backbone
    invert = method.InvertParams(steps=0)
    state = method.invert(backbone, cats[:1], invert, generators(1))
    assert torch.equal(state["tokens"][0, 0], backbone.text_encoder.get_input_embeddings().weight[2368].float())
    low, full = method.edit(  # seed 7: seed 0's first draw is the noise the generated input came from
        backbone, state, cats[:1], invert, [method.EditParams(steps=10, strength=0.1), method.EditParams(steps=10)],
        generators(1, seed=7),
    )
    roundtrip = backbone.decode(state["latents"])  # the random VAE's own round trip swamps the input
    assert (low - roundtrip).abs().mean() < 0.5 * (full - roundtrip).abs().mean()


def test_checks_name_what_is_wrong(tiny_backbone, cats, method, generators):
    with pytest.raises(ValueError, match="exactly one"):
        method.InvertParams(template="a photo")
    with pytest.raises(ValueError, match="placeholder 'xyzzy-qq'"):
        method.invert(tiny_backbone, cats[:1], method.InvertParams(placeholder="xyzzy-qq", steps=0), generators(1))
    moved = dataclasses.replace(cats[0], target_prompt="a photo of a sleeping dog")
    with pytest.raises(ValueError, match="object word 'cat' is not in its target prompt"):
        method.invert(tiny_backbone, [moved], method.InvertParams(object_word="cat", steps=0), generators(1))
    p = method.InvertParams()
    assert (p.steps, p.learning_rate, p.per_layer, p.placeholder) == (500, 5e-3, True, "sks")
    e = method.EditParams()
    assert (e.target_layers, e.guidance, e.steps, e.strength) == ("all", 7.5, 50, 1.0)


def test_textual_inversion_edits_as_diffusers_loads_and_samples_the_token(tiny_backbone, cats, method, generators):
    """With one shared token (`per_layer: false`), the edit at strength 1 equals diffusers'
    `StableDiffusionPipeline` (DDIM scheduler) after `load_textual_inversion` of the learned vector
    under a new token, on the same tiny weights, prompt and starting noise."""
    import copy

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    backbone = tiny_backbone
    invert = method.InvertParams(steps=3, per_layer=False)
    state = method.invert(backbone, cats, invert, generators(2))
    point = method.EditParams(steps=6, guidance=5.0)
    (ours,) = method.edit(backbone, state, cats, invert, [point], generators(2))

    pipe = StableDiffusionPipeline(
        vae=backbone.vae,
        text_encoder=copy.deepcopy(backbone.text_encoder),  # loading the token grows the embedding table
        tokenizer=copy.deepcopy(backbone.tokenizer),
        unet=backbone.unet,
        scheduler=DDIMScheduler.from_config(backbone.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    noise = torch.stack([torch.randn(4, 8, 8, generator=g) for g in generators(2)])
    images = []
    # the object words: "cat", and "road" (the last content word both prompts of the car share)
    for b, prompt in enumerate(("a photo of a sleeping <v{}>", "a blue car on a <v{}>")):
        token = f"<v{b}>"
        pipe.load_textual_inversion({token: state["tokens"][b, 0]}, token=token)
        images.append(
            pipe(
                prompt.format(b), num_inference_steps=6, guidance_scale=5.0, latents=noise[b : b + 1], output_type="pt"
            ).images[0]
        )
    torch.testing.assert_close(ours, torch.stack(images), atol=2e-5, rtol=0)
