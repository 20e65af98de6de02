"""LocalBlend `when_given` (PIE-Bench's protocol): blend the samples that have blended words, leave the
others unblended instead of failing."""

import pytest
from PIL import Image

from editsweep.datasets.base import Sample
from editsweep.diffusion.p2p import GuidedP2PParams, build_control

STEPS = 10


def test_samples_without_blended_words_are_left_unblended_only_when_asked(tiny_backbone):
    image = Image.new("RGB", (64, 64))
    with_words = Sample("a", image, "a photo of a dog", "a photo of a cat", meta={"blended_words": ["cat", "dog"]})
    without = Sample("b", image, "a watercolor of a lake", "a photo of a lake")
    control = build_control(tiny_backbone, [with_words, without], [GuidedP2PParams(local_blend="when_given")], STEPS)
    assert control.blend.start_step.tolist() == [int(0.2 * STEPS), STEPS + 1]  # the second never blends
    assert control.blend.source_words[0].sum() == 1 and control.blend.source_words[1].sum() == 0
    with pytest.raises(ValueError, match="blended_words"):
        build_control(tiny_backbone, [with_words, without], [GuidedP2PParams(local_blend=True)], STEPS)
    assert GuidedP2PParams(local_blend=True).local_blend is True
