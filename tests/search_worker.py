"""A process of tests/search_test.py's multi-host check: searches a fixed gallery in 4 shards
(this process's share of them) and writes the merged top-k.

  python -m tests.search_worker OUT.npz [COORDINATOR NUM_PROCESSES PROCESS_ID]
"""

import json
import sys

import jax
import numpy as np


def main(argv):
  if len(argv) > 2:
    jax.distributed.initialize(argv[2], int(argv[3]), int(argv[4]))
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from pdsn_jax.method import builders  # pylint: disable=g-import-not-at-top
  from pdsn_jax.gallery import search  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  backbone = builders.backbone(config, False)
  v = backbone.init(jax.random.key(0), np.zeros((1, 112, 96, 3), np.float32))
  rng = np.random.default_rng(7)
  u_shape = (7, 6, 32)
  gallery = search.ArrayGallery(rng.normal(size=(70, *u_shape)).astype(np.float32),
                                np.arange(70), shard_size=18)
  emb = rng.normal(size=(9, 32)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  flags = rng.uniform(size=(9, 9)) < 0.3
  table = rng.integers(0, 2, (9, *u_shape)).astype(np.float32)
  searcher = search.Searcher(backbone, u_shape, batch_size=8, k=5)
  scores, index = search.identify(searcher, v, table, emb, flags, gallery)
  own = list(range(jax.process_index(), gallery.num_shards, jax.process_count()))
  np.savez(argv[1], scores=scores, index=index,
           info=json.dumps({"processes": jax.process_count(), "own_shards": own}))


if __name__ == "__main__":
  main(sys.argv)
