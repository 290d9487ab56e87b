"""The trunks the config may name (``model.kind``): what a face network must provide, and one
registry line per kind.

A trunk is a flax module with ``features(x) -> U`` (the top conv feature map, NHWC, from
normalised images), ``head(U) -> embedding`` (F: everything after U, ``embedding_dim`` wide)
and ``head_params() -> names`` (the top-level parameter collections of F: a fine-tune of F
alone, and checkpoints sharing U, are recognised by them). Optionally (``finetune.trainable=
"top"``) ``bottom(x) -> V``, ``top(V) -> U`` with ``features = top . bottom``, and
``top_params() -> names`` of ``top``'s parameters (MobileFaceNet has them). To add one: a module with the
network, then a ``TrunkKind`` line in ``KINDS`` below (or ``register`` at run time); its
``validate`` checks its own ``model.*`` fields and ``load`` reads its weight files for
``trunk.init_from``. docs/architecture.md shows the steps.
"""

import dataclasses
import os
from typing import Any, Callable, Protocol

import ml_collections


class Trunk(Protocol):
  embedding_dim: int

  def features(self, x) -> Any: ...

  def head(self, u) -> Any: ...

  def head_params(self) -> tuple[str, ...]: ...


@dataclasses.dataclass(frozen=True)
class TrunkKind:
  """``build(model_config, bn_axis_name, dtype) -> Trunk``; ``validate(model_config)`` raises
  ValueError naming a bad ``model.*`` field; ``load(path) -> {params, batch_stats}`` reads a
  weight file of this kind, or returns None for a path that is not one (then ``init_from`` is
  read as another run's orbax checkpoint)."""

  build: Callable[[ml_collections.ConfigDict, str | None, Any], Trunk]
  validate: Callable[[ml_collections.ConfigDict], None] = lambda m: None
  load: Callable[[str], dict | None] = lambda path: None


def _choice(field: str, allowed) -> Callable[[ml_collections.ConfigDict], None]:
  def check(m):
    if m[field] not in allowed:
      raise ValueError(f"config.model.{field}={m[field]!r} is not one of {tuple(allowed)}")
  return check


def _iresnet() -> TrunkKind:
  from pdsn_jax.models import iresnet  # pylint: disable=g-import-not-at-top
  return TrunkKind(
      build=lambda m, axis, dtype: iresnet.IResNet(
          depth=m.depth, width=m.width, embedding_dim=m.embedding_dim, dropout=m.dropout,
          bn_axis_name=axis, dtype=dtype),
      validate=_choice("depth", iresnet.STAGE_BLOCKS))


def _mobilefacenet() -> TrunkKind:
  from pdsn_jax.models import mobilefacenet  # pylint: disable=g-import-not-at-top
  return TrunkKind(
      build=lambda m, axis, dtype: mobilefacenet.MobileFaceNet(
          width=m.width, embedding_dim=m.embedding_dim, bn_axis_name=axis, dtype=dtype),
      load=lambda path: None if os.path.isdir(path) else mobilefacenet.load(path))


def _dlib() -> TrunkKind:
  from pdsn_jax.models import dlib_files, dlib_resnet  # pylint: disable=g-import-not-at-top

  def load(path):
    if path != "dlib" and not path.endswith(".dat"):
      return None
    return dlib_resnet.to_variables(dlib_resnet.read_network(
        dlib_files.path() if path == "dlib" else path))
  return TrunkKind(
      build=lambda m, axis, dtype: dlib_resnet.DlibResNet(dlib_resnet.U_BLOCKS[m.dlib_u],
                                                          dtype=dtype),
      validate=_choice("dlib_u", dlib_resnet.U_BLOCKS), load=load)


KINDS: dict[str, TrunkKind] = {
    "iresnet": _iresnet(),
    "mobilefacenet": _mobilefacenet(),
    "dlib": _dlib(),  # dlib's pretrained ResNet (configs/dlib_trunk.py)
}


def register(name: str, kind: TrunkKind) -> None:
  """Adds a trunk kind at run time (tests, user code); the config may then name it."""
  KINDS[name] = kind


def get(name: str) -> TrunkKind:
  if name not in KINDS:
    raise ValueError(f"config.model.kind={name!r} is not one of {tuple(KINDS)}")
  return KINDS[name]
