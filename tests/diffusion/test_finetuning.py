import pytest
import torch

from editsweep.diffusion.finetuning import denoising_losses, finetune_unet, finetuned_unet, optimize_embeddings
from editsweep.diffusion.inputs import images_tensor


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_bit_identical(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def loss_at(backbone, latents, cond, seed: int = 123) -> float:
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(latents))]
    with torch.no_grad():
        return denoising_losses(backbone, latents, cond, gens).sum().item()


def test_losses_are_per_image_and_reproducible(tiny_backbone, generated_samples, generators):
    latents = tiny_backbone.encode_images(images_tensor(generated_samples, tiny_backbone.device))
    cond = tiny_backbone.encode_text([s.source_prompt for s in generated_samples])
    with torch.no_grad():
        batch = denoising_losses(tiny_backbone, latents, cond, generators(3))
        alone = denoising_losses(tiny_backbone, latents[1:2], cond[1:2], generators(3)[1:2])
    assert batch.shape == (3,)
    torch.testing.assert_close(batch[1:2], alone)


def test_optimized_embeddings_lower_the_loss(tiny_backbone, generated_samples, generators):
    latents = tiny_backbone.encode_images(images_tensor(generated_samples, tiny_backbone.device))
    init = tiny_backbone.encode_text(["a photo of a dog"] * 3)
    tuned = optimize_embeddings(tiny_backbone, latents, init, generators(3), steps=30, learning_rate=1e-2)
    assert tuned.shape == init.shape and not tuned.requires_grad
    assert loss_at(tiny_backbone, latents, tuned) < loss_at(tiny_backbone, latents, init)
    assert torch.equal(optimize_embeddings(tiny_backbone, latents, init, generators(3), 0, 1e-2), init.float())


def test_finetuned_copy_learns_and_leaves_the_worker_weights_bit_identical(tiny_backbone, generated_samples, generators):
    before = snapshot(tiny_backbone.unet)
    original = tiny_backbone.unet
    latents = tiny_backbone.encode_images(images_tensor(generated_samples[:1], tiny_backbone.device))
    cond = tiny_backbone.encode_text([generated_samples[0].source_prompt])
    start = loss_at(tiny_backbone, latents, cond)
    with finetuned_unet(tiny_backbone) as unet:
        assert tiny_backbone.unet is unet and unet is not original
        finetune_unet(tiny_backbone, unet, latents, cond, generators(1), steps=20, learning_rate=1e-3)
        assert not unet.training
        assert loss_at(tiny_backbone, latents, cond) < start
    assert tiny_backbone.unet is original
    assert_bit_identical(tiny_backbone.unet, before)
    assert all(p.grad is None and not p.requires_grad for p in tiny_backbone.unet.parameters())


def test_worker_weights_survive_an_error_inside_the_block(tiny_backbone):
    before = snapshot(tiny_backbone.unet)
    original = tiny_backbone.unet
    with pytest.raises(RuntimeError, match="boom"), finetuned_unet(tiny_backbone) as unet:
        with torch.no_grad():
            next(unet.parameters()).add_(1.0)
        raise RuntimeError("boom")
    assert tiny_backbone.unet is original
    assert_bit_identical(tiny_backbone.unet, before)
