"""The method's stages, run in order by ``pdsn_jax.main``; each resumes from its own checkpoints."""

from pdsn_jax.stages import dictionary, pdsn, trunk

STAGES = {"trunk": trunk.run, "pdsn": pdsn.run, "dictionary": dictionary.run}


def parse_stages(spec: str) -> list[str]:
  """'trunk,pdsn' -> ['trunk', 'pdsn'], rejecting unknown names with the allowed ones."""
  names = [s.strip() for s in spec.split(",") if s.strip()]
  bad = [s for s in names if s not in STAGES]
  if bad or not names:
    raise ValueError(f"config.stages={spec!r}: unknown stage(s) {bad}; allowed: {list(STAGES)}")
  return names
