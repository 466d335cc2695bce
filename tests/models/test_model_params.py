"""Parameter counts of every preset, pinned (computed abstractly: nothing is materialised)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from pixelhdm_jax.models.pixelhdm import PixelHDM

# default/small/large: the original's counts (docs/original.md §1, §2.10) plus, where the
# text encoder (Qwen3-0.6B, 1024 wide) is wider than the network, the learned text projection 1024 x D.
EXPECTED = {
    "default": 356_364_355,
    "small": 44_207_219 + 1024 * 512,
    "large": 676_355_619 + 1024 * 1152,
    "tiny": 603_451,
}


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_parameter_count(preset):
  config = base.get_config(preset)
  model = PixelHDM.from_config(config.model)
  dim = config.model.text_dim
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,)),
                          jnp.zeros((1, 4, dim)), jnp.ones((1, 4), bool), jnp.zeros((1, dim)))
  assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes["params"])) == EXPECTED[preset]
