"""MegaFace-scale identification: gallery store build and streaming masked top-k search.

  python -m benchmarks.gallery_search [--model=mobilefacenet|iresnet] \\
      [--sizes=10000,30000,100000] [--dtype=int8] [--probes=64] [--out=/tmp/gallery_bench]

Builds one store of max(sizes) built-in SYNTHETIC faces (rendered, aligned 112x96) through an
untrained trunk of the chosen shape (the values of U do not change the costs): MobileFaceNet
(U 7x6x512, F = depthwise 7x6 + BN + 1x1 + BN, 128-d) or the default config's IResNet-18 at
width 0.25 (U 7x6x128, F = BN + FC + BN, 256-d). Every size is searched from a prefix of that
store in its own process, so peak RSS is per size. For each it prints build throughput, search
throughput (distractor x pattern comparisons/s; 64 probes spread over 1, 9 or 50 distinct block
patterns), the same probes with every distractor embedded separately per probe, peak RSS,
store bytes, and projections for 1M distractors x the 3,530 FaceScrub probes.
"""

import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags



# Peak dense bf16 throughput assumed for the projections, and the share of it a GEMM-bound
# search is assumed to reach.
PEAKS = {"one H100 SXM (989 TFLOP/s bf16 dense)": 989e12,
         "TPU v5e-16 (16 x 197 TFLOP/s bf16)": 16 * 197e12}
UTILISATION = 0.4
DISK_GBPS = 2.0  # NVMe sequential read assumed for the store
FACESCRUB_PROBES, MEGAFACE = 3530, 1_000_000


def _config():
  from configs import pdsn  # pylint: disable=g-import-not-at-top
  c = pdsn.get_config()
  if flags.FLAGS.model == "mobilefacenet":
    c.model.update(kind="mobilefacenet", width=1.0, embedding_dim=128)
  return c


def _network(config):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from pdsn_jax.method import builders  # pylint: disable=g-import-not-at-top
  net = builders.backbone(config, False)
  return net, net.init(jax.random.key(0), jnp.zeros((1, *config.data.image_size, 3)))


def _store_path() -> str:
  return os.path.join(flags.FLAGS.out, f"{flags.FLAGS.model}_{flags.FLAGS.dtype}_{max(_sizes())}")


def _sizes() -> list[int]:
  return [int(s) for s in flags.FLAGS.sizes.split(",")]


def build() -> dict:
  """Builds (or resumes) the store; returns faces/s of what was built now."""
  from pdsn_jax.method import builders  # pylint: disable=g-import-not-at-top
  from pdsn_jax.train import parallel
  from pdsn_jax.data.synthetic import SyntheticFaces  # pylint: disable=g-import-not-at-top
  from pdsn_jax.evaluation import masked  # pylint: disable=g-import-not-at-top
  from pdsn_jax.gallery import store
  config = _config()
  net, v = _network(config)
  mesh = parallel.make_mesh()
  embedder = masked.Embedder(net, mesh, 64, builders.normalize)
  rep = parallel.put_replicated(v, mesh)
  src = SyntheticFaces(max(_sizes()), 1, 0, 10_000_000, tuple(config.data.image_size))
  t = time.time()
  out, stats = store.build_from_source(
      _store_path(), src, lambda images: embedder.features(rep, images),
      u_shape=builders.u_shape(config), dtype=flags.FLAGS.dtype, shard_size=flags.FLAGS.shard_size,
      trunk_checkpoint=f"untrained {flags.FLAGS.model}",
      trunk_fingerprint=store.fingerprint(builders.feature_variables(net, v)),
      description=f"synthetic:{max(_sizes())}")
  stats["seconds"] = time.time() - t
  return stats


def _probes(num_patterns: int, num_probes: int, emb_dim: int, seed: int = 0):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  pats = set()
  while len(pats) < num_patterns:  # distinct block patterns, 1-3 blocks each (or none)
    f = np.zeros(9, bool)
    f[rng.choice(9, rng.integers(0, 4), replace=False)] = True
    pats.add(tuple(f))
  pats = np.asarray(sorted(pats))
  flags_ = pats[np.arange(num_probes) % num_patterns]
  e = rng.normal(size=(num_probes, emb_dim)).astype(np.float32)
  return e / np.linalg.norm(e, axis=1, keepdims=True), flags_


def child(n: int) -> dict:
  """Searches the first ``n`` faces; prints costs and this process's peak RSS."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from pdsn_jax.method import builders  # pylint: disable=g-import-not-at-top
  from pdsn_jax.gallery import search, store  # pylint: disable=g-import-not-at-top
  config = _config()
  net, v = _network(config)
  u_shape = builders.u_shape(config)
  table = np.random.default_rng(1).integers(0, 2, (9, *u_shape)).astype(np.float32)
  st = store.Store(_store_path())
  gallery = search.Prefix(st, n)
  first = search.Prefix(st, min(n, st.shard_size))
  def shard_of(name):  # "shard_00012.npy" -> 12 (meta.json: None)
    stem = name.split(".")[0].rsplit("_", 1)[-1]
    return int(stem) if stem.isdigit() else None
  out = {"size": n, "store_bytes": sum(
      os.path.getsize(os.path.join(st.path, f)) for f in os.listdir(st.path)
      if shard_of(f) is not None and shard_of(f) < gallery.num_shards)}
  searcher_for = {p: search.Searcher(net, u_shape, 256, k=1, path=p)
                  for p in ("affine", "general")}
  auto = search.Searcher(net, u_shape, 256, k=1)  # "auto": a timed trial, 9 patterns
  auto.search(v, table, *_probes(9, flags.FLAGS.probes, config.model.embedding_dim), first,
              shards=[0])
  ((key, picked),) = auto.choices.items() if auto.choices else ((None, "general"),)
  out["auto_path"] = picked
  out["auto_trial"] = auto.trial_seconds.get(key, {})
  out["head_flops"] = searcher_for["general"].head_flops(v)
  out["affine_flops"] = 2.0 * np.prod(u_shape) * config.model.embedding_dim

  def timed(searcher, emb, fl, gal):
    searcher.search(v, table, emb, fl, first, shards=[0])  # compile
    t = time.time()
    searcher.search(v, table, emb, fl, gal)
    return time.time() - t

  pats = (1, 9, 50) if flags.FLAGS.child_costs else (9,)
  for k in pats:
    emb, fl = _probes(k, flags.FLAGS.probes, config.model.embedding_dim)
    for path, s in searcher_for.items():
      if not flags.FLAGS.child_costs and path != (flags.FLAGS.child_path or out["auto_path"]):
        continue
      secs = timed(s, emb, fl, gallery)
      out[f"{path}_{k}"] = {"seconds": secs, "pattern_cmp_per_s": n * k / secs,
                            "probe_cmp_per_s": n * flags.FLAGS.probes / secs}
  if flags.FLAGS.child_costs:  # every distractor embedded separately per probe: own pattern each
    emb, fl = _probes(flags.FLAGS.probes, flags.FLAGS.probes, config.model.embedding_dim, seed=2)
    secs = timed(searcher_for[out["auto_path"]], emb, fl, first)
    out["per_probe"] = {"seconds": secs, "probe_cmp_per_s": first.num_faces * flags.FLAGS.probes / secs}
  out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return out


def _fmt_time(s: float) -> str:
  if s >= 3600:
    return f"{s / 3600:.1f} h"
  return f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s" if s >= 1 else f"{1e3 * s:.1f} ms"


def define_flags() -> None:
  """This script's flags (defined when it runs, so that importing it defines none)."""
  flags.DEFINE_enum("model", "mobilefacenet", ["mobilefacenet", "iresnet"], "Trunk shape.")
  flags.DEFINE_string("sizes", "10000,30000,100000", "Distractor counts.")
  flags.DEFINE_enum("dtype", "int8", ["float32", "float16", "int8"], "Stored U.")
  flags.DEFINE_integer("probes", 64, "Probes per search.")
  flags.DEFINE_integer("shard_size", 4096, "Faces per store shard.")
  flags.DEFINE_string("out", "/tmp/gallery_bench", "Where the store goes.")
  flags.DEFINE_integer("child_size", 0, "(internal) search this many faces and report.")
  flags.DEFINE_bool("child_costs", False, "(internal) every path and pattern count.")
  flags.DEFINE_string("child_path", "", "(internal) the path to time (the first child's "
                              "auto choice), so every size reports the same path.")


def main(argv):
  del argv
  if flags.FLAGS.child_size:
    print("RESULT " + json.dumps(child(flags.FLAGS.child_size)), flush=True)
    return
  stats = build()
  rows = []
  # the costs of every path once (smallest size), then each size alone for its peak RSS
  for n, costs in [(min(_sizes()), True)] + [(n, False) for n in _sizes()]:
    picked = rows[0]["auto_path"] if rows else ""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gallery_search", f"--child_size={n}",
                           f"--child_costs={costs}", f"--child_path={picked}",
                           f"--model={flags.FLAGS.model}", f"--sizes={flags.FLAGS.sizes}",
                           f"--dtype={flags.FLAGS.dtype}", f"--probes={flags.FLAGS.probes}",
                           f"--shard_size={flags.FLAGS.shard_size}", f"--out={flags.FLAGS.out}"],
                          capture_output=True, text=True, check=False,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
      raise RuntimeError(proc.stderr[-3000:])
    rows.append(json.loads(line[0][7:]))
  small, rows = rows[0], rows[1:]
  path = small["auto_path"]
  print(f"\nmodel {flags.FLAGS.model}, store {flags.FLAGS.dtype}, {flags.FLAGS.probes} probes, k=1; "
        f"store build: {stats['faces_built']} faces at {stats['faces_per_sec'] or 0:.1f} "
        "faces/s (render + align + trunk)" if stats["faces_built"] else "store reused")
  print(f"F: {small['head_flops'] / 1e6:.2f} MFLOP per face and pattern; affine matrix "
        f"{small['affine_flops'] / 1e6:.2f} MFLOP; auto path: {path} (its trial, ms per batch of "
        f"256: " + ", ".join(f"{k} {1e3 * s:.1f}" for k, s in small["auto_trial"].items())
        + ")\n")
  print("| distractors | store MB | peak RSS MB (search process) | distractor x pattern / s, 9 "
        f"patterns ({path}) | distractor x probe / s |")
  print("|---:|---:|---:|---:|---:|")
  for r in rows:
    m = r[f"{path}_9"]
    print(f"| {r['size']:,} | {r['store_bytes'] / 2**20:.1f} | {r['peak_rss_mb']:.0f} | "
          f"{m['pattern_cmp_per_s']:,.0f} | {m['probe_cmp_per_s']:,.0f} |")
  print(f"\nat {small['size']:,} distractors, {flags.FLAGS.probes} probes:\n")
  print("| path | patterns | distractor x pattern / s | distractor x probe / s |")
  print("|---|---:|---:|---:|")
  for k in (1, 9, 50):
    for p in ("affine", "general"):
      m = small[f"{p}_{k}"]
      print(f"| {p} | {k} | {m['pattern_cmp_per_s']:,.0f} | {m['probe_cmp_per_s']:,.0f} |")
  pp = small["per_probe"]
  ratios = ", ".join(f"{p} {small[f'{p}_9']['probe_cmp_per_s']:,.0f} "
                     f"({small[f'{p}_9']['probe_cmp_per_s'] / pp['probe_cmp_per_s']:.1f}x)"
                     for p in ("general", "affine"))
  print(f"\nevery distractor embedded separately per probe ({path} F, {flags.FLAGS.probes} patterns): "
        f"{pp['probe_cmp_per_s']:,.0f} distractor x probe / s; grouped by 9 patterns: {ratios}")
  rss = [r["peak_rss_mb"] for r in rows]
  print(f"peak RSS {rss[0]:.0f} MB at {rows[0]['size']:,} vs {rss[-1]:.0f} MB at "
        f"{rows[-1]['size']:,} ({100 * (rss[-1] / rss[0] - 1):+.1f}%)")
  emb_dim = 128 if flags.FLAGS.model == "mobilefacenet" else 256
  per_face = rows[-1]["store_bytes"] / rows[-1]["size"]
  print(f"\nprojection: {MEGAFACE:,} distractors x {FACESCRUB_PROBES:,} probes; accelerators "
        f"at an assumed {int(UTILISATION * 100)}% of peak; reading the {flags.FLAGS.dtype} store "
        f"({per_face * MEGAFACE / 1e9:.1f} GB) at an assumed {DISK_GBPS:g} GB/s takes "
        f"{_fmt_time(per_face * MEGAFACE / (DISK_GBPS * 1e9))} (a floor for every device)")
  embed = small["affine_flops"] if path == "affine" else small["head_flops"]
  for k in (9, 50):
    m = small[f"{path}_{k}"]
    # this CPU's measured FLOP rate on the same work (embedding per pattern + scoring)
    cpu_rate = small["size"] * (k * embed + flags.FLAGS.probes * 2 * emb_dim) / m["seconds"]
    flops = MEGAFACE * (k * embed + FACESCRUB_PROBES * 2 * emb_dim)
    cells = [f"this CPU ({cpu_rate / 1e9:.1f} GFLOP/s measured) {_fmt_time(flops / cpu_rate)}"]
    cells += [f"{name}: {_fmt_time(flops / (peak * UTILISATION))}" for name, peak in PEAKS.items()]
    print(f"  {k} patterns ({flops / 1e12:.1f} TFLOP): " + "; ".join(cells))


if __name__ == "__main__":
  define_flags()
  app.run(main)
