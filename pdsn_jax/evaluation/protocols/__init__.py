"""The evaluation protocols, one module each; ``evaluators.PROTOCOLS`` names them and
``config.eval.protocols`` turns them on, each with its own settings:

  verification     pair verification, clean and with the second face occluded (thresholds)
  ar_pasted        AR-style rank-1 with pasted occluders, gallery protocols 1 and 2
  distractors      MegaFace-style rank-1: protocol 2's gallery plus the distractor pool
  ar_real          AR's own photos of real sunglasses and scarves (paper Table 6)
  lfw_distractors  MegaFace's curve on real faces (LFW), 0 to every distractor
"""
