"""One stage descriptor (issue 37): a stage is one module plus one registry line. The toy stage of
``tests/toy_stage.py`` runs through ``main.run`` with provenance, resume and
``config.overwrite``; the tables that used to be kept by hand (stage names, seed streams,
provenance sections, networks, the evaluation's upstream) are read from the descriptors."""

import dataclasses
import os
import shutil

import chex
import numpy as np
import pytest

from configs import tiny
from pdsn_jax import main, stages
from pdsn_jax.method import generator_statistics, pdsn_probe
from pdsn_jax.run import provenance
from pdsn_jax.run import stage as stage_lib
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.config_validation import validate
from tests import toy_stage


@pytest.fixture
def toy():
  stage_lib.register(toy_stage.STAGE)  # the one registry line a new stage needs
  try:
    yield toy_stage.STAGE
  finally:
    stage_lib.unregister(toy_stage.NAME)


def _config(**toy_changes):
  config = tiny.get_config()
  config.toy = toy_stage.section()
  config.toy.update(toy_changes)
  config.stages = toy_stage.NAME
  return config


def _weights(wd):
  return workdir_lib.load(wd, toy_stage.NAME, keys=("params",))["params"]["w"]


def test_a_toy_stage_runs_through_main_with_provenance_resume_and_overwrite(toy, tmp_path):
  wd = str(tmp_path / "run")
  summary = main.run(_config(), wd)[toy_stage.NAME]
  assert summary["steps"] == 6 and summary["toy"]
  record = provenance.read(wd, toy_stage.NAME)
  assert record["kind"] == toy_stage.NAME and "toy.learning_rate" in record["fields"]
  assert "seed" in record["fields"] and not any(k.startswith("trunk.") for k in record["fields"])
  first = _weights(wd)

  # resume: the last checkpoint lost, the stage replays steps 4-6 from step 3's checkpoint
  shutil.rmtree(os.path.join(workdir_lib.checkpoints(wd, toy_stage.NAME), "6"))
  assert workdir_lib.latest_step(wd, toy_stage.NAME) == 3
  main.run(_config(), wd)
  assert workdir_lib.latest_step(wd, toy_stage.NAME) == 6
  chex.assert_trees_all_equal(_weights(wd), first)  # bit-identical

  # another value of a field its descriptor records: refused, naming it
  with pytest.raises(provenance.StaleStage, match=r"toy.learning_rate: 0.5 -> 0.25"):
    main.run(_config(learning_rate=0.25), wd)
  changed = _config(learning_rate=0.25)
  changed.overwrite = toy_stage.NAME
  main.run(changed, wd)
  assert [d for d in os.listdir(wd) if d.startswith("toy.replaced-")]
  assert not np.array_equal(_weights(wd), first)


def test_config_stages_and_overwrite_accept_a_registered_stage_only(toy, tmp_path):
  validate(_config())
  stage_lib.unregister(toy_stage.NAME)
  with pytest.raises(ValueError, match=r"config.stages='toy': unknown stage\(s\) \['toy'\]; "
                                       r"allowed: \['trunk', 'bank', 'pdsn'"):
    validate(_config())
  config = tiny.get_config()
  config.overwrite = "trunk,toy"
  with pytest.raises(ValueError, match=r"config.overwrite='trunk,toy': unknown stage"):
    validate(config)


@pytest.mark.parametrize("change, message", [
    (dict(name="trunk"), r"stage name 'trunk' is already registered"),
    (dict(folders=("toy", "lambda0_pdsn")), r"folder\(s\) \['lambda0_pdsn'\] belong to stage"),
    (dict(upstream=("nothing",)), r"upstream \['nothing'\] is no registered stage's folder"),
    (dict(stream=stage_lib.Stream(1, 90)), r"stream \(1, 90\) collides with stage 'pdsn'"),
    (dict(stream=stage_lib.Stream(90, 3)), r"stream \(90, 3\) collides with stage 'detector'"),
])
def test_a_clashing_stage_is_refused_naming_the_clash(change, message):
  with pytest.raises(ValueError, match=message):
    stage_lib.register(dataclasses.replace(toy_stage.STAGE, **change))
  assert toy_stage.NAME not in stage_lib.registered()


def test_streams_are_distinct_apart_from_the_fine_tuned_networks_sharing_the_trunks():
  streams = {s.name: s.stream for s in stage_lib.registered().values() if s.stream}
  shared = {n for n, s in streams.items() if s == streams["trunk"]}
  assert shared == {"trunk", "baseline", "finetune"}
  others = [s for n, s in streams.items() if n not in shared] + [
      streams["trunk"], pdsn_probe.STREAM, generator_statistics.STREAM]
  assert len({s.data_offset for s in others}) == len(others)
  folds = [s.init_fold for s in others if s.init_fold is not None]
  assert len(set(folds)) == len(folds)


def test_what_used_to_be_hand_kept_tables_is_read_from_the_descriptors():
  assert stage_lib.networks() == ["trunk", "baseline", "finetune"]
  assert stage_lib.owner("lambda0_dictionary") == "lambda0"
  assert stage_lib.owner("face_finder") == "face_finder"
  assert set(stages.evaluate.STAGE.upstream) >= {"dictionary", "detector", "lambda0_pdsn"}
  assert "detector.heldout_every" in provenance.fields(tiny.get_config(), "pdsn")
  assert "detector.threshold" not in provenance.fields(tiny.get_config(), "detector")


def test_a_changed_face_finder_is_moved_aside_by_its_own_overwrite_name(tmp_path):
  # the old folder -> stage rule cut names at their first "_": face_finder's outputs could not
  # be overwritten ("face" was asked for, and config.overwrite refuses "face")
  wd = str(tmp_path)
  config = tiny.get_config()
  provenance.begin(config, wd, "face_finder", "face_finder")
  with open(workdir_lib.stage_file(wd, "face_finder", "weights.npz"), "w") as f:
    f.write("x")
  config.face_finder.learning_rate = config.face_finder.learning_rate / 2
  with pytest.raises(provenance.StaleStage, match=r"--config.overwrite=face_finder "):
    provenance.begin(config, wd, "face_finder", "face_finder")
  config.overwrite = "face_finder"
  provenance.begin(config, wd, "face_finder", "face_finder")
  assert [d for d in os.listdir(wd) if d.startswith("face_finder.replaced-")]


@pytest.mark.parametrize("argv, root", [
    (["main", "--config=/srv/repo/configs/real_mobilefacenet.py:select", "--workdir=w"],
     "/srv/repo"),
    (["main", "--config", "configs/tiny.py"], os.path.abspath(".")),
    (["main", "--workdir=w"], None),
])
def test_a_config_file_finds_its_sibling_configs_wherever_the_command_starts(argv, root):
  # configs/ is not an installed package: the folder above the config's is put on the path
  assert main.config_root(argv) == root
