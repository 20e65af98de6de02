import numpy as np
import torch
from PIL import Image

from editsweep.datasets.base import Sample
from editsweep.diffusion.inputs import images_tensor, to_pil


def test_images_are_handed_over_channels_last_as_the_reference_code_does():
    """The reference's `image2latent` permutes without `.contiguous()`; so do we (a pinned quirk)."""
    rng = np.random.default_rng(0)
    samples = [Sample(str(i), Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)), "", "x") for i in range(2)]
    tensor = images_tensor(samples, torch.device("cpu"))
    assert tensor.shape == (2, 3, 8, 8) and tensor.is_contiguous(memory_format=torch.channels_last)
    assert np.array_equal(np.asarray(to_pil(tensor[1])), np.asarray(samples[1].image))
