"""What every editor test starts from: a DDIM inversion of the samples on the tiny backbone."""

import pytest

from editsweep.diffusion.ddim import DDIMParams
from editsweep.methods.inversions.ddim import DDIMInversion

STEPS = 6


@pytest.fixture
def ddim_inverted(tiny_backbone, generators):
    """samples -> their `Inverted` under DDIM inversion of STEPS steps."""

    def invert(samples):
        inversion, params = DDIMInversion(), DDIMParams(steps=STEPS)
        state = inversion.invert(tiny_backbone, samples, params, generators(len(samples)))
        return inversion.inverted(tiny_backbone, state, samples, params)

    return invert
