"""Scores of a predicted occlusion mask against the true one."""

import numpy as np

from pdsn_jax.data import occlusion


def segmentation_metrics(pred: np.ndarray, true: np.ndarray, min_overlap: float = 0.5,
                         overlap: str = "coverage") -> dict:
  """Mean IU over {background, occluded} from whole-set counts (as for FCN), pixel accuracy,
  and block-assignment accuracy (the 9 generator blocks flagged from each mask)."""
  pred, true = np.asarray(pred, bool), np.asarray(true, bool)
  ious = []
  for cls in (False, True):
    p, t = pred == cls, true == cls
    union = np.sum(p | t)
    ious.append(np.sum(p & t) / union if union else 1.0)
  fp = occlusion.block_flags(pred, min_overlap, overlap)
  ft = occlusion.block_flags(true, min_overlap, overlap)
  return {"mean_iu": float(np.mean(ious)), "iou_occluded": float(ious[1]),
          "pixel_accuracy": float(np.mean(pred == true)),
          "block_accuracy": float(np.mean(fp == ft)),
          "image_block_pattern_accuracy": float(np.mean(np.all(fp == ft, axis=1)))}
