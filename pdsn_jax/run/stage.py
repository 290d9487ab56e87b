"""What a stage is: each stage module declares one ``Stage`` (a module with two, like
``stages/finetune.py``, declares two) and ``pdsn_jax/stages/__init__.py`` registers it with one
line. Everything else that knows about stages reads it from the registry here: the allowed
values of ``config.stages`` and ``config.overwrite``, which stage owns a workdir folder, each
stage's seed stream (``training``), the config fields its provenance record holds
(``provenance``), which stages ``eval.models`` may name (``config_validation``) and what the
evaluation reads. So adding a stage is one module plus one registry line (and its config
section); ``tests/stage_test.py`` adds a toy one that way.

The registry is filled when ``pdsn_jax.stages`` is imported; the layers below it read it at
run time, never import the stage modules (``tests/architecture_test.py``).
"""

import dataclasses
from typing import Callable, NamedTuple


class Stream(NamedTuple):
  """A stage's randomness: the data pipeline's seed is ``config.seed + data_offset``; its
  initial parameters come from ``fold_in(root key, init_fold)`` (None: the root key itself).
  Two stages share a stream only on purpose (the fine-tuned networks see the trunk's face
  order); distinct streams differ in both numbers (``register`` checks it)."""

  data_offset: int
  init_fold: int | None


# the config fields every stage's outputs depend on, and those of a stage that pastes
# occluders (``detector.heldout_every`` splits the occluder files: ``builders.occluders``)
BASE = ("seed", "prng_impl", "data")
OCCLUDERS = ("occlusion", "detector.heldout_every")
# read by the evaluation alone: the stages that train load the train and select files, which
# their own globs and ``occlusion.split_by_globs`` (both recorded) decide, so a finished run
# can be evaluated on other test files without retraining
TEST_GLOBS = "occlusion.splits.test"


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage of ``config.stages``.

  ``run(config, workdir) -> summary``; ``depends_on``: the config sections or dotted fields its
  outputs depend on (its provenance record; ``tests/reads_test.py`` checks them against what
  its code reads), less ``excluded``; ``through_upstream``: fields of an upstream stage's section
  it reads, whose changes reach it through that stage's fingerprint; ``section``: its own
  config section (batch, steps, optimizer; "" when it has none); ``upstream``: the stage
  folders it reads; ``stream``: its randomness (None: it draws none); ``network``: its folder
  holds a recognition network ``eval.models`` may name; ``folders``: the folders it makes
  under the workdir (default: its name).
  """

  name: str
  run: Callable
  depends_on: tuple[str, ...]
  section: str = ""
  upstream: tuple[str, ...] = ()
  stream: Stream | None = None
  network: bool = False
  excluded: tuple[str, ...] = (TEST_GLOBS,)
  through_upstream: tuple[str, ...] = ()
  folders: tuple[str, ...] = ()

  def __post_init__(self):
    if not self.folders:
      object.__setattr__(self, "folders", (self.name,))


_REGISTRY: dict[str, Stage] = {}


def register(*stages: Stage) -> dict[str, Stage]:
  """Adds ``stages`` in order (a stage's upstream must be registered before it); returns the
  registry. Raises ValueError naming the clash: a name or folder taken, an unknown upstream,
  a stream that collides with another stage's."""
  for s in stages:
    if not isinstance(s, Stage):
      raise TypeError(f"register() takes pdsn_jax.run.stage.Stage objects, got {s!r}")
    if s.name in _REGISTRY and _REGISTRY[s.name] is not s:
      raise ValueError(f"stage name {s.name!r} is already registered (by "
                       f"{_REGISTRY[s.name].run.__module__}); pick another name")
    taken = {f: o.name for o in _REGISTRY.values() if o.name != s.name for f in o.folders}
    clash = [f for f in s.folders if f in taken]
    if clash:
      raise ValueError(f"stage {s.name!r}: folder(s) {clash} belong to stage(s) "
                       f"{sorted({taken[f] for f in clash})}")
    unknown = [u for u in s.upstream if owner(u) is None]
    if unknown:
      raise ValueError(f"stage {s.name!r}: upstream {unknown} is no registered stage's folder "
                       f"(registered: {sorted(folders())}); register those stages first")
    for o in _REGISTRY.values():
      if s.stream is None or o.stream is None or o.stream == s.stream or o.name == s.name:
        continue
      same_fold = s.stream.init_fold is not None and s.stream.init_fold == o.stream.init_fold
      if s.stream.data_offset == o.stream.data_offset or same_fold:
        raise ValueError(f"stage {s.name!r}: stream {tuple(s.stream)} collides with stage "
                         f"{o.name!r}'s {tuple(o.stream)}; take unused numbers (in use: "
                         f"{sorted({tuple(x.stream) for x in _REGISTRY.values() if x.stream}, key=str)})")
    _REGISTRY[s.name] = s
  return dict(_REGISTRY)


def unregister(name: str) -> None:
  """Removes a stage (tests that register a toy one put the registry back)."""
  _REGISTRY.pop(name, None)


def registered() -> dict[str, Stage]:
  """{name: Stage} in registration order (the order the stages are listed everywhere)."""
  if not _REGISTRY:
    raise RuntimeError("no stage is registered: import pdsn_jax.stages first (it registers the "
                       "built-in ones)")
  return dict(_REGISTRY)


def get(name: str) -> Stage:
  """The stage called ``name``; KeyError naming the registered ones."""
  stages = registered()
  if name not in stages:
    raise KeyError(f"no stage {name!r}; registered: {list(stages)}")
  return stages[name]


def folders() -> list[str]:
  """Every folder a registered stage makes under a workdir."""
  return [f for s in _REGISTRY.values() for f in s.folders]


def owner(folder: str) -> str | None:
  """The name of the stage that makes ``folder`` (Table 3's "lambda0_pdsn" -> "lambda0"; the
  ``config.stages`` and ``config.overwrite`` entry for it), None if no stage does."""
  for s in _REGISTRY.values():
    if folder in s.folders:
      return s.name
  return None


def networks() -> list[str]:
  """The stages whose folder holds a recognition network (what ``eval.models`` may name)."""
  return [s.name for s in registered().values() if s.network]


def parse(spec: str, key: str = "config.stages") -> list[str]:
  """'trunk,pdsn' -> ['trunk', 'pdsn'], rejecting unknown names with the allowed ones."""
  names = [s.strip() for s in str(spec).split(",") if s.strip()]
  stages = registered()
  bad = [s for s in names if s not in stages]
  if bad:
    raise ValueError(f"{key}={spec!r}: unknown stage(s) {bad}; allowed: {list(stages)}")
  return names
