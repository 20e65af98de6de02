"""pix2pix-zero's primitives: the loss and direction computed independently, and the whole
inversion and edit against diffusers' StableDiffusionPix2PixZeroPipeline on the tiny weights."""

import copy
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMInverseScheduler, DDIMScheduler
from diffusers.pipelines.deprecated import StableDiffusionPix2PixZeroPipeline

from editsweep.datasets.base import Sample
from editsweep.diffusion.inputs import images_tensor, source_prompts
from editsweep.diffusion.pix2pix_zero import (
    auto_correlation_loss,
    draw_shifts,
    edit_direction,
    kl_divergence,
    pyramid_sizes,
)
from editsweep.methods.editors.pix2pix_zero import Pix2PixZeroEditor, Pix2PixZeroParams, directions_of
from editsweep.methods.inversions.p2pzero import P2PZeroInversion, P2PZeroInversionParams


def test_auto_correlation_loss_is_the_codes_per_channel_loop_of_rolls():
    """Batched gathers give what the paper's code computes channel by channel with torch.roll."""
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    shifts = draw_shifts([torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)], 3, 16)
    assert pyramid_sizes(16) == [16, 8] and pyramid_sizes(64) == [64, 32, 16, 8] and shifts.shape == (2, 3, 2)
    assert shifts.min() >= 1 and shifts[:, :, 0].max() < 8 and shifts[:, :, 1].max() < 4
    expected = torch.zeros(2)
    for b in range(2):
        for c in range(3):
            x = noise[b, c][None, None]
            for level in range(2):
                s = int(shifts[b, c, level])
                expected[b] += (x * torch.roll(x, s, dims=2)).mean() ** 2 + (x * torch.roll(x, s, dims=3)).mean() ** 2
                x = F.avg_pool2d(x, 2)
    assert torch.allclose(auto_correlation_loss(noise, shifts), expected, rtol=1e-5)
    flat = noise[1].flatten()
    assert torch.allclose(kl_divergence(noise)[1], flat.var() + flat.mean() ** 2 - 1 - torch.log(flat.var() + 1e-7))


def test_direction_is_the_mean_difference_of_the_sentence_embeddings(tiny_backbone, tmp_path):
    """Each sentence alone through the tokenizer and text encoder, then the difference of the means."""
    backbone = tiny_backbone

    def embed(sentence):
        ids = backbone.tokenizer(sentence, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        return backbone.text_encoder(ids.input_ids)[0][0]

    source = ["a photo of a cat", "a cat on a sofa", "my cat sleeping"]
    target = ["a photo of a dog", "a dog in the park"]
    expected = torch.stack([embed(s) for s in target]).mean(0) - torch.stack([embed(s) for s in source]).mean(0)
    assert torch.allclose(edit_direction(backbone, source, target), expected, atol=1e-5)
    (tmp_path / "cat.txt").write_text("\n".join(source) + "\n\n")
    (tmp_path / "dog.txt").write_text("\n".join(target))
    sample = Sample("s", None, "a red dog", "a red cat", meta={"blended_words": ["cat", "dog"]})
    files = Pix2PixZeroParams(sentences="files", source_file=str(tmp_path / "cat.txt"), target_file=str(tmp_path / "dog.txt"))
    assert torch.allclose(directions_of(backbone, [sample, sample], files), expected.expand(2, -1, -1), atol=1e-5)
    prompts = directions_of(backbone, [sample], Pix2PixZeroParams())[0]
    assert torch.allclose(prompts, embed("a red dog") - embed("a red cat"), atol=1e-5)
    words = directions_of(backbone, [sample], Pix2PixZeroParams(sentences="words", templates=("a {}", "the {} here")))[0]
    assert torch.allclose(words, (embed("a dog") + embed("the dog here") - embed("a cat") - embed("the cat here")) / 2, atol=1e-5)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sentences": "files", "source_file": "nope.txt"}, r"source_file 'nope.txt' is not a file"),
        ({"sentences": "files", "source_file": "EMPTY"}, r"source_file .* holds no sentence"),
        ({"sentences": "files", "source_file": "GOOD"}, r"needs target_file"),
        ({"target_file": "GOOD"}, r"target_file is read only with sentences: files"),
        ({"sentences": "words", "templates": ["a photo"]}, r"templates must hold"),
    ],
)
def test_missing_or_empty_sentence_files_are_refused(tmp_path, params, message):
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "good.txt").write_text("a cat\n")
    files = {"EMPTY": str(tmp_path / "empty.txt"), "GOOD": str(tmp_path / "good.txt")}
    params = {k: files.get(v, v) if isinstance(v, str) else v for k, v in params.items()}
    with pytest.raises(ValueError, match=message):
        Pix2PixZeroParams.model_validate(params)


STEPS = 3
# The tiny UNet predicts noise of std ~0.03, so the KL step at the paper's lambda_kl = 20 (sized for
# SD's unit-variance noise) overshoots to NaN in the paper's code, the pipeline and here alike.
REGULARISATION = {"lambda_ac": 20.0, "lambda_kl": 0.05, "reg_steps": 2, "ac_rolls": 3}


def test_inversion_and_edit_are_diffusers_pix2pix_zero_pipeline(tiny_backbone, generated_samples, generators):
    """Each sample alone through the pipeline (`invert`, then `__call__` on its latent) against
    editsweep's inversion and editor on both samples at once.

    Settings where both agree: the source prompt's embedding as the pipeline's negative prompt
    (the paper's code's choice and editsweep's default), so its reference pass is the conditional
    prediction, as editsweep's source rows at guidance 1 (at another negative prompt the pipeline's
    reference pass samples at the edit's scale, while editsweep's retraces the input); the inverted
    latents given to `invert` (the pipeline would sample the VAE posterior, editsweep takes its
    mean). One deliberate difference is pinned: the pipeline draws the roll of its auto-correlation
    loss in [0, size // 2) with `torch.randint(size // 2)`, the paper's code (and editsweep) in
    [1, size // 2), so the test shifts the pipeline's draw to that range - the same generator
    calls in the same order. Remaining differences are float32 round-off (alpha-bars in float64
    here, DDIMScheduler's in float32).
    """
    backbone = tiny_backbone
    samples = [Sample(s.id, s.image, s.source_prompt.replace("a ", "the ", 1), s.source_prompt) for s in generated_samples[:2]]
    inversion, inv_params = P2PZeroInversion(), P2PZeroInversionParams(steps=STEPS, **REGULARISATION)
    state = inversion.invert(backbone, samples, inv_params, generators(2))
    inverted = inversion.inverted(backbone, state, samples, inv_params)
    point = Pix2PixZeroParams(xa_guidance=0.5)
    (edited,) = Pix2PixZeroEditor().edit(backbone, inverted, samples, [point], [5.0], generators(2))

    pipe = StableDiffusionPix2PixZeroPipeline(
        vae=backbone.vae,
        text_encoder=backbone.text_encoder,
        tokenizer=backbone.tokenizer,
        unet=copy.deepcopy(backbone.unet),  # the pipeline installs its processors and grad flags on its UNet
        scheduler=DDIMScheduler.from_config(backbone.scheduler.config),
        inverse_scheduler=DDIMInverseScheduler.from_config(backbone.scheduler.config),
        feature_extractor=None,
        safety_checker=None,
        caption_generator=None,
        caption_processor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    latents = backbone.encode_images(images_tensor(samples, backbone.device))
    randint = torch.randint

    def paper_roll(high, size, generator=None):
        return randint(1, high, size, generator=generator)

    for b, sample in enumerate(samples):
        cond = backbone.encode_text(source_prompts([sample]))
        with mock.patch.object(torch, "randint", paper_roll):
            noise = pipe.invert(
                prompt_embeds=cond,
                image=latents[b : b + 1],
                num_inference_steps=STEPS,
                generator=generators(1, seed=b)[0],
                lambda_auto_corr=REGULARISATION["lambda_ac"],
                lambda_kl=REGULARISATION["lambda_kl"],
                num_reg_steps=REGULARISATION["reg_steps"],
                num_auto_corr_rolls=REGULARISATION["ac_rolls"],
                output_type="latent",
            ).latents
        assert torch.allclose(noise, inverted.start[b : b + 1], atol=1e-4), float((noise - inverted.start[b]).abs().max())
        out = pipe(
            prompt_embeds=cond,
            negative_prompt_embeds=cond,
            source_embeds=backbone.encode_text([sample.source_prompt]),
            target_embeds=backbone.encode_text([sample.target_prompt]),
            latents=noise,
            num_inference_steps=STEPS,
            guidance_scale=5.0,
            cross_attention_guidance_amount=0.5,
            output_type="latent",
        ).images
        assert torch.allclose(backbone.decode(out), edited[b : b + 1], atol=1e-4)
