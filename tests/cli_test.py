"""Each command's --help shows its usage and its own flags (issue 23), as python -m and as the
console script's module would."""

import subprocess
import sys

import pytest

from tests import helpers

CASES = {
    "embed": ("Embeddings, occlusion masks", ["--images", "--out", "--sheet", "--face_finder"]),
    "verify": ("Same person?", ["--workdir", "--occlusion", "--face_finder"]),
    "identify": ("Rank-k gallery faces", ["--gallery", "--store", "--probes", "--k"]),
    "gallery": ("Builds a gallery feature store", ["--out", "--shard_size", "--face_finder"]),
    "export": ("Exports a run's inference", ["--workdir", "--model"]),
    "main": ("Entry point", ["--config", "--workdir", "--num_processes"]),
    "occlusions": ("Runs a trained occlusion detector", ["--workdir", "--images", "--out"]),
    "evaluate": ("Scores a finished run on other data", ["--workdir", "--name", "--pairs",
                                                          "--occluders", "--set"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(CASES))
def test_help_lists_the_commands_own_flags(command):
  first, wanted = CASES[command]
  module = "pdsn_jax.main" if command == "main" else f"pdsn_jax.cli.{command}"
  out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=helpers.REPO,
                       capture_output=True, text=True, timeout=120, check=False).stdout
  assert out.startswith(first), out[:300]
  listed = {line.split(":")[0].strip() for line in out.splitlines() if line.startswith("  --")}
  assert set(wanted) <= listed, (wanted, listed)
  if command == "verify":  # only its own: identify's and embed's flags are not listed
    assert not {"--gallery", "--images", "--k"} & listed
