import torch

from editsweep.datasets.base import Sample
from editsweep.diffusion.ddim import DDIMParams, invert_source, make_schedule
from editsweep.diffusion.inputs import images_tensor
from editsweep.diffusion.p2p import GuidedP2PParams, p2p_latents
from editsweep.methods.base import get_method_class


def test_source_branch_returns_the_input_latent_exactly(tiny_backbone, generated_samples):
    samples = [Sample(s.id, s.image, "a watercolor painting", s.source_prompt) for s in generated_samples]
    latents = tiny_backbone.encode_images(images_tensor(samples, tiny_backbone.device))
    trajectory = invert_source(tiny_backbone, samples, 8)
    null = tiny_backbone.encode_text([""] * 3)
    points = [GuidedP2PParams(guidance=7.5), GuidedP2PParams(guidance=7.5, cross_replace=0.2)]
    schedule = make_schedule(tiny_backbone, 8)
    source, target = p2p_latents(
        tiny_backbone, samples, points, trajectory[-1], schedule, null, 7.5, source_trajectory=trajectory
    )
    assert torch.allclose(source, latents.float(), atol=1e-6)
    free, _ = p2p_latents(tiny_backbone, samples, points, trajectory[-1], schedule, null, 7.5)
    assert ((free - latents) ** 2).mean() > 1e-4  # without the correction, guidance drifts
    # The target branch is not pinned: it is an edit, not the input.
    assert not torch.allclose(target[:3], latents.float(), atol=1e-3)


def test_method_keeps_the_trajectory_and_edits_every_point(tiny_backbone, generated_samples, generators):
    method = get_method_class("direct_inversion")()
    params = DDIMParams(steps=6)
    state = method.invert(tiny_backbone, generated_samples, params, generators(3))
    assert state["trajectory"].shape == (7, 3, 4, 8, 8)
    points = [GuidedP2PParams(cross_replace=c) for c in (0.2, 0.8)]
    out = method.edit(tiny_backbone, state, generated_samples, params, points, generators(3))
    assert [o.shape for o in out] == [(3, 3, 64, 64)] * 2
