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


def test_the_curve_figure_draws_steps_on_a_linear_axis_and_distractors_on_a_log_one(tmp_path):
  # up from 0 at x=0 to 1 at x=50, then flat: halfway to 50 a linear axis puts the line at
  # half height; a log axis does not (log 25 is 82% of log 50)
  xs, ys = [0, 50, 100], [0.0, 1.0, 1.0]
  pw, ph, left, top = 260, 200, 45, 40
  colour = np.asarray(visualize._CURVE_COLOURS[0])  # pylint: disable=protected-access

  def rows_at(log_x, share):
    img = np.asarray(Image.open(visualize.curve_figure(
        {"p": {"s": ys}}, xs, str(tmp_path / f"c{log_x}.png"), "t", log_x=log_x))).astype(int)
    col = img[top:top + ph + 1, left + 5 + int(share * (pw - 10))]
    return np.nonzero((np.abs(col - colour).sum(-1) == 0))[0]

  linear = rows_at(False, 0.25)  # x = 25
  assert linear.size and abs(linear.mean() - ph / 2) <= 3
  logged = rows_at(True, 0.25)   # the same column is x = 10**(0.25 * log10(100)) ~ 3 on a log axis
  assert logged.size and abs(logged.mean() - ph / 2) > 20
