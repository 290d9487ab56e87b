"""The layout rules of docs/architecture.md, checked on the source: the package's imports
(function-level ones too) form no cycle and only go down its layers, stages do not import each
other, only workdir.py builds paths under a workdir, and every stage's entry point stays
short."""

import ast
import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pdsn_jax")
STAGES_DIR = os.path.join(ROOT, "stages")
STAGE_MODULES = sorted(f[:-3] for f in os.listdir(STAGES_DIR)
                       if f.endswith(".py") and f != "__init__.py")


def _imports(path: str) -> set[str]:
  """Every module a file imports, as dotted names (``from a import b`` gives a and a.b)."""
  tree = ast.parse(open(path, encoding="utf-8").read(), path)
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: resolve against pdsn_jax/stages
        base = ".".join(["pdsn_jax", "stages"][:3 - node.level] + ([base] if base else []))
      out.add(base)
      out.update(f"{base}.{a.name}" for a in node.names)
  return out


def test_the_parser_sees_a_stage_import():
  # the check below would pass vacuously if _imports missed this form
  src = os.path.join(ROOT, "stages", "__init__.py")
  assert "pdsn_jax.stages.trunk" in _imports(src)


@pytest.mark.parametrize("module", STAGE_MODULES)
def test_no_stage_module_imports_another_stage(module):
  imported = _imports(os.path.join(STAGES_DIR, f"{module}.py"))
  others = {f"pdsn_jax.stages.{m}" for m in STAGE_MODULES if m != module}
  assert not imported & (others | {"pdsn_jax.stages"}), (
      f"pdsn_jax/stages/{module}.py imports {sorted(imported & (others | {'pdsn_jax.stages'}))}: "
      "move what it needs into pdsn_jax/method/builders.py or another shared module")


def test_only_workdir_builds_checkpoint_paths():
  hits = []
  for d, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(d, f)
        for i, line in enumerate(open(path, encoding="utf-8"), 1):
          if re.search(r"[\"']checkpoints[\"']", line):
            hits.append(f"{os.path.relpath(path, ROOT)}:{i}")
  assert hits and all(h.startswith(os.path.join("run", "workdir.py:")) for h in hits), hits


# the first argument of an os.path.join that starts from a workdir (or a stage folder in it)
_WORKDIR_ROOT = re.compile(r"\b(workdir|wd|run)\b|\bstage_dir\b")


def _workdir_joins(source: str, name: str) -> list[str]:
  """``name:line`` of every os.path.join whose first argument is a workdir or a stage folder."""
  out = []
  for node in ast.walk(ast.parse(source, name)):
    if (isinstance(node, ast.Call) and ast.unparse(node.func) == "os.path.join" and node.args
        and _WORKDIR_ROOT.search(ast.unparse(node.args[0]))):
      out.append(f"{name}:{node.lineno}")
  return out


def test_the_workdir_check_sees_a_path_built_outside_workdir_py():
  src = ("import os\n"
         "a = os.path.join(workdir, 'evaluate', 'x.png')\n"
         "b = os.path.join(workdir_lib.stage_dir(self.workdir, s), 'profile')\n"
         "c = os.path.join(root, 'images')\n")
  assert _workdir_joins(src, "m.py") == ["m.py:2", "m.py:3"]


def test_only_workdir_builds_paths_under_a_workdir():
  hits = []
  for d, _, files in os.walk(ROOT):
    for f in files:
      path = os.path.join(d, f)
      if f.endswith(".py") and os.path.relpath(path, ROOT) != os.path.join("run", "workdir.py"):
        hits += _workdir_joins(open(path, encoding="utf-8").read(), os.path.relpath(path, ROOT))
  assert not hits, (f"paths under a workdir built outside pdsn_jax/run/workdir.py: {hits}; add a "
                    "function there (stage_file, results_files, ...) and call it")


@pytest.mark.parametrize("module", STAGE_MODULES)
def test_stage_entry_points_are_at_most_60_lines(module):
  tree = ast.parse(open(os.path.join(STAGES_DIR, f"{module}.py"), encoding="utf-8").read())
  runs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("run")]
  assert runs, f"pdsn_jax/stages/{module}.py has no run function"
  for fn in runs:
    length = fn.end_lineno - fn.lineno + 1
    assert length <= 60, f"{module}.{fn.name} is {length} lines"


# The package's layers, lowest first: a module imports only from its own layer or below
# (docs/architecture.md). A module is in the first layer one of whose prefixes names it.
LAYERS = (
    ("base", ("run.files", "run.stage", "train.distributed", "train.parallel",
              "train.training", "train.metrics", "packages", "run", "train")),
    ("data and models", ("data", "models", "faces")),
    ("run", ("run.workdir", "run.checkpointing", "run.provenance", "method.fdm",
             "method.builders", "visualize", "method")),
    ("method", ("train.loop", "method.recognition", "method.pdsn_probe",
                "method.generator_statistics", "method.inference",
                "evaluation", "gallery")),
    ("stages", ("stages",)),
    ("entry", ("config_validation", "run_config", "recognizer", "api", "cli", "main", "")),
)


def import_graph(root: str = ROOT, package: str = "pdsn_jax") -> dict[str, set[str]]:
  """{module: the package's modules it imports}, every import statement counted (function-level
  ones too), ``from pkg import mod`` as an import of ``pkg.mod``."""
  modules = {}
  for d, _, files in os.walk(root):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(d, f), root)[:-3].replace(os.sep, ".")
        name = package if rel == "__init__" else f"{package}.{rel.removesuffix('.__init__')}"
        modules[name] = os.path.join(d, f)
  graph = {}
  for name, path in modules.items():
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    out = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        out.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        out.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                   else node.module for a in node.names)
    graph[name] = {m for m in out if m in modules and m != name}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
  """One import cycle (its modules in order, the first again at the end), or [] when none."""
  state, stack = {}, []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for n in sorted(graph[m]):
      if state.get(n) == "open":
        return stack[stack.index(n):] + [n]
      if n not in state:
        found = visit(n)
        if found:
          return found
    state[m] = "done"
    stack.pop()
    return []

  for m in sorted(graph):
    if m not in state:
      found = visit(m)
      if found:
        return found
  return []


def layer(module: str, package: str = "pdsn_jax") -> int:
  """The layer of the longest prefix in ``LAYERS`` that names ``module`` (a folder's modules
  can sit in different layers: ``run.files`` is base, ``run.workdir`` run bookkeeping)."""
  rel = module[len(package) + 1:] if module != package else ""
  found = [(len(p), i) for i, (_, prefixes) in enumerate(LAYERS) for p in prefixes
           if rel == p or (p and rel.startswith(p + ".")) or (not p and not rel)]
  if not found:
    raise AssertionError(f"{module} is in no layer of tests/architecture_test.py LAYERS: add it")
  return max(found)[1]


def upward_imports(graph: dict[str, set[str]], package: str = "pdsn_jax") -> list[str]:
  return [f"{m} ({LAYERS[layer(m, package)][0]}) imports {n} ({LAYERS[layer(n, package)][0]})"
          for m in sorted(graph) for n in sorted(graph[m])
          if layer(n, package) > layer(m, package)]


def test_the_package_imports_form_no_cycle():
  cycle = find_cycle(import_graph())
  assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_imports_only_go_down_the_layers():
  assert not upward_imports(import_graph())


def _plant(root, files: dict) -> str:
  pkg = root / "pkg"
  for name, text in files.items():
    path = pkg / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  return str(pkg)


def test_the_checks_see_a_planted_cycle_and_an_upward_import(tmp_path):
  pkg = _plant(tmp_path, {
      "__init__.py": "", "run/__init__.py": "",
      "run/files.py": "def f():\n  from pkg.run import workdir  # a function-level import counts\n",
      "run/workdir.py": "from pkg.run import files\n",
      "data/__init__.py": "", "data/x.py": "from pkg.stages import trunk\n",
      "stages/__init__.py": "", "stages/trunk.py": "import pkg.run.files\n"})
  graph = import_graph(pkg, "pkg")
  assert find_cycle(graph) == ["pkg.run.files", "pkg.run.workdir", "pkg.run.files"]
  assert upward_imports(graph, "pkg") == [
      "pkg.data.x (data and models) imports pkg.stages.trunk (stages)",
      "pkg.run.files (base) imports pkg.run.workdir (run)"]


# Where AR's real-occlusion photos are read, and which subjects: the evaluation's ar_real
# protocol reads every subject; any other reader (a benchmark, a stage) asks for the
# development subjects only (../shared/data/ar_real/README.md: test subjects 27-50 are scored
# only for an adopted configuration).
_AR_READERS = re.compile(r"\b(?:ar_photos|ar_real|ar_lib)\.(?:load|read_labels)\(")
_AR_PROTOCOL = os.path.join("pdsn_jax", "evaluation", "protocols", "ar_real.py")


def ar_readers_without_the_development_split(root: str) -> list[str]:
  """``file:line`` of every call that reads AR photos outside the evaluation's protocol without
  ``DEVELOPMENT_SUBJECTS`` in its arguments."""
  hits = []
  for folder in ("pdsn_jax", "benchmarks"):
    for d, _, fs in os.walk(os.path.join(root, folder)):
      for f in fs:
        path = os.path.join(d, f)
        rel = os.path.relpath(path, root)
        if not f.endswith(".py") or rel == _AR_PROTOCOL:
          continue
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
          if isinstance(node, ast.Call) and _AR_READERS.match(ast.unparse(node.func) + "("):
            if "DEVELOPMENT_SUBJECTS" not in ast.unparse(node):
              hits.append(f"{rel}:{node.lineno}")
  return hits


def test_only_the_evaluation_reads_ar_test_subjects(tmp_path):
  assert not ar_readers_without_the_development_split(os.path.dirname(ROOT))
  bench = tmp_path / "benchmarks"
  bench.mkdir()
  (bench / "x.py").write_text("ar = ar_photos.load(root, (112, 96))\n"
                              "ok = ar_photos.read_labels(root, ar_photos.DEVELOPMENT_SUBJECTS)\n")
  assert ar_readers_without_the_development_split(str(tmp_path)) == ["benchmarks/x.py:1"]
