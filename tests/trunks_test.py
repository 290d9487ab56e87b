"""A new trunk is one module and one registry line (issue 23): a toy network registered here
runs the tiny config's stages I-II end to end."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from pdsn_jax.method import builders  # noqa: F401
from pdsn_jax import config_validation, stages
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.run import stage as stage_lib
from pdsn_jax.models import trunks


class ToyTrunk(nn.Module):
  """U: one 16x16 stride-16 conv + BatchNorm (7x6x8 from 112x96); F: BatchNorm + Dense."""

  embedding_dim: int = 16
  bn_axis_name: str | None = None

  def setup(self):
    self.conv = nn.Conv(8, (16, 16), (16, 16), padding="VALID")
    self.bn = nn.BatchNorm(axis_name=self.bn_axis_name, momentum=0.9)
    self.fc = nn.Dense(self.embedding_dim)

  def head_params(self):
    return ("fc",)

  def features(self, x, train: bool = False):
    return nn.relu(self.bn(self.conv(x), use_running_average=not train))

  def head(self, u, train: bool = False):
    return self.fc(u.reshape(u.shape[0], -1))

  def __call__(self, x, train: bool = False):
    return self.head(self.features(x, train), train)


@pytest.mark.slow
def test_a_registered_toy_trunk_runs_stages_i_and_ii(tmp_path):
  trunks.register("toy", trunks.TrunkKind(
      build=lambda m, axis, dtype: ToyTrunk(m.embedding_dim, axis)))
  try:
    config = tiny.get_config()
    config.model.kind = "toy"
    config.trunk.learning_rate = 0.01  # SGD at 0.1 grows a one-conv net past the divergence guard
    config_validation.validate(config)
    assert builders.u_shape(config) == (7, 6, 8)
    wd = str(tmp_path)
    for name in ("trunk", "pdsn", "dictionary"):
      stage_lib.get(name).run(config, wd)
    assert workdir_lib.latest_step(wd, "pdsn") == config.pdsn.num_steps
    from pdsn_jax.method import fdm  # pylint: disable=g-import-not-at-top
    items = fdm.load(workdir_lib.dictionary_file(wd))[0]
    assert items.shape == (9, 7, 6, 8) and np.all(items.reshape(9, -1).mean(1) < 1)
  finally:
    trunks.KINDS.pop("toy")
  with pytest.raises(ValueError, match=r"model.kind='toy' is not one of \('iresnet', "):
    config_validation.validate(config)


def test_a_kind_checks_its_own_fields():
  config = tiny.get_config()
  config.model.depth = 7
  with pytest.raises(ValueError, match=r"config.model.depth=7 is not one of \(18, "):
    config_validation.validate(config)
  config.model.update(kind="mobilefacenet")  # depth means nothing to MobileFaceNet
  config_validation.validate(config)
