"""Figures: each draws what its data says."""

import numpy as np
from PIL import Image

from pdsn_jax import visualize


def test_the_histogram_figure_puts_each_series_where_its_values_are(tmp_path):
  rng = np.random.default_rng(0)
  soft = rng.uniform(0.0, 0.2, 500)       # all in the left fifth
  saturated = rng.uniform(0.9, 1.0, 50)  # all in the right tenth, ten times fewer values
  img = np.asarray(Image.open(visualize.histogram_figure(
      {"soft": soft, "saturated": saturated}, str(tmp_path / "h.png"), "masks"))).astype(int)
  left, width, top, height = 50, 400, 30, 200
  plot = img[top:top + height + 1, left:left + width]
  colours = visualize._CURVE_COLOURS  # pylint: disable=protected-access

  def columns(colour):
    return np.nonzero((np.abs(plot - np.asarray(colour)).sum(-1) == 0).any(0))[0]

  soft_x, sat_x = columns(colours[0]), columns(colours[1])
  assert soft_x.size and sat_x.size
  assert soft_x.max() < 0.2 * width + 2 and sat_x.min() > 0.9 * width - 2
  # shares, not counts: the smaller series' bars are as tall as the larger's (both spread
  # evenly over their bins: 1/4 of 500 and 1/2 of 50 per bin)
  def tallest(colour):
    rows = np.nonzero((np.abs(plot - np.asarray(colour)).sum(-1) == 0).any(1))[0]
    return height - rows.min()
  assert tallest(colours[1]) > tallest(colours[0])
