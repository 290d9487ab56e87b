"""Figures as PNG (PIL only): occlusion contact sheets, the mask dictionary, MED per channel.

Command-line use (a contact sheet of every block's occlusions on a few faces):
  python -m pdsn_jax.visualize --out=occlusions.png [--occluder_dir=../shared/data/occluders]
"""

import numpy as np
from PIL import Image, ImageDraw

from pdsn_jax.run import files
from pdsn_jax.data import occlusion

_GRID_COLOUR = (255, 255, 0)


def _heat(values: np.ndarray, scale: int) -> np.ndarray:
  """2-D values in [0, 1] -> RGB uint8 (dark blue -> yellow), nearest-upsampled."""
  v = np.clip(values, 0, 1)
  rgb = np.stack([v, v ** 0.5 * 0.9, 0.5 * (1 - v)], -1)
  img = (rgb * 255).astype(np.uint8)
  return np.kron(img, np.ones((scale, scale, 1), np.uint8))


def _pad(img: np.ndarray, p: int = 2, value: int = 255) -> np.ndarray:
  return np.pad(img, ((p, p), (p, p), (0, 0)), constant_values=value)


def _label(img: np.ndarray, text: str) -> np.ndarray:
  bar = Image.new("RGB", (img.shape[1], 12), (255, 255, 255))
  ImageDraw.Draw(bar).text((2, 0), text, fill=(0, 0, 0))
  return np.concatenate([np.asarray(bar), img], 0)


def save_with_header(sheet: np.ndarray, header: list[str], path: str) -> str:
  """Saves a contact sheet of equal-width columns under a bar naming each column."""
  bar = Image.new("RGB", (sheet.shape[1], 12), (255, 255, 255))
  cw = sheet.shape[1] // len(header)
  for k, txt in enumerate(header):
    ImageDraw.Draw(bar).text((k * cw + 3, 0), txt, fill=(0, 0, 0))
  with files.atomic_path(path) as tmp:  # never half a picture
    Image.fromarray(np.concatenate([np.asarray(bar), sheet], 0)).save(tmp)
  return path


def draw_grid(image: np.ndarray, grid: int = occlusion.GRID) -> np.ndarray:
  out = image.copy()
  h, w = out.shape[:2]
  for k in range(1, grid):
    out[int(round(k * h / grid)) - 1 if k * h // grid else 0, :] = _GRID_COLOUR
    out[:, int(round(k * w / grid)) - 1] = _GRID_COLOUR
  return out


def occlusion_sheet(faces: list[np.ndarray], library: occlusion.OccluderLibrary, path: str,
                    neighbour_prob: float = 0.5, seed: int = 0) -> str:
  """Rows: faces; columns: the clean face with its 5x5 grid, then each generator block occluded."""
  t = occlusion.OccludeEveryBlock(library, neighbour_prob=neighbour_prob)
  rows = []
  for i, face in enumerate(faces):
    rec = t({"image": face}, np.random.default_rng([seed, i]))
    cells = [_pad(draw_grid(face))] + [_pad(draw_grid(o)) for o in rec["occluded"]]
    rows.append(np.concatenate(cells, 1))
  header = ["clean"] + [f"block {b // 5},{b % 5}" for b in occlusion.CENTRAL_BLOCKS]
  return save_with_header(np.concatenate(rows, 0), header, path)


def dictionary_figure(mean_masks: np.ndarray, fdms: np.ndarray, path: str,
                      channels: int = 4, scale: int = 12) -> str:
  """Per block (rows): discarded share per U position (mean over channels of 1 - FDM), then
  mean mask and binary FDM for the first ``channels`` channels (the paper's Figs. 5 and 7)."""
  rows = []
  for j, blk in enumerate(occlusion.CENTRAL_BLOCKS):
    discard = 1.0 - fdms[j].astype(np.float32).mean(-1)
    cells = [_label(_pad(_heat(discard / max(discard.max(), 1e-9), scale)),
                    f"{blk // 5},{blk % 5} discarded")]
    for c in range(min(channels, mean_masks.shape[-1])):
      cells.append(_label(_pad(_heat(mean_masks[j, ..., c], scale)), f"mean c{c}"))
      cells.append(_label(_pad(_heat(fdms[j, ..., c].astype(np.float32), scale)), f"FDM c{c}"))
    rows.append(np.concatenate(cells, 1))
  with files.atomic_path(path) as tmp:  # never half a picture
    Image.fromarray(np.concatenate(rows, 0)).save(tmp)
  return path


def discard_centroids(fdms: np.ndarray) -> list[tuple[float, float]]:
  """(row, col) in U's map of each item's discarded elements (mean over channels)."""
  out = []
  for f in fdms:
    d = 1.0 - f.astype(np.float32).mean(-1)
    tot = max(d.sum(), 1e-9)
    rr, cc = np.mgrid[0:d.shape[0], 0:d.shape[1]]
    out.append((float((d * rr).sum() / tot), float((d * cc).sum() / tot)))
  return out


def block_centre_in_u(block: int, u_hw: tuple[int, int], grid: int = occlusion.GRID):
  """Where block ``block``'s centre falls in U's (h, w) map, in U cell coordinates."""
  r, c = divmod(block, grid)
  return ((r + 0.5) / grid * u_hw[0] - 0.5, (c + 0.5) / grid * u_hw[1] - 0.5)


def med_figure(med: np.ndarray, path: str, height: int = 60) -> str:
  """Bar rows of the per-channel median relative change of U (paper Eq. 1, Fig. 3).

  ``med``: (num_blocks, C); one row of bars per block, tallest bar = row max.
  """
  nb, c = med.shape
  bw = max(1, 600 // c)
  img = Image.new("RGB", (c * bw + 80, nb * (height + 6)), (255, 255, 255))
  d = ImageDraw.Draw(img)
  for j in range(nb):
    y0 = j * (height + 6)
    blk = occlusion.CENTRAL_BLOCKS[j]
    top = max(med[j].max(), 1e-9)
    d.text((2, y0 + height // 2 - 10), f"blk {blk // 5},{blk % 5}", fill=(0, 0, 0))
    d.text((2, y0 + height // 2 + 2), f"max {top:.3g}", fill=(90, 90, 90))
    for k in range(c):
      hh = int(height * med[j, k] / top)
      d.rectangle([80 + k * bw, y0 + height - hh, 80 + (k + 1) * bw - 1, y0 + height],
                  fill=(40, 90, 200))
  with files.atomic_path(path) as tmp:  # never half a picture
    img.save(tmp)
  return path


def detection_sheet(images: np.ndarray, pred: np.ndarray, path: str, true_masks=None,
                    min_overlap: float = 0.5, overlap: str = "coverage",
                    names: list[str] | None = None) -> str:
  """Rows of (image, predicted mask in red, assigned generator blocks outlined[, true mask])."""
  boxes = occlusion.block_boxes(images.shape[1:3])
  flags = occlusion.block_flags(np.asarray(pred, bool), min_overlap, overlap)
  rows = []
  for i, img in enumerate(images):
    over = img.astype(np.float32).copy()
    over[pred[i]] = 0.45 * over[pred[i]] + 0.55 * np.array([255, 0, 0])
    blocks = Image.fromarray(img.copy())
    d = ImageDraw.Draw(blocks)
    for k, b in enumerate(occlusion.CENTRAL_BLOCKS):
      if flags[i, k]:
        y0, x0, y1, x1 = boxes[b]
        d.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 0, 0), width=2)
    cells = [img, over.astype(np.uint8), np.asarray(blocks)]
    if true_masks is not None:
      cells.append(np.repeat((np.asarray(true_masks[i], np.uint8) * 255)[..., None], 3, -1))
    row = np.concatenate([_pad(c) for c in cells], 1)
    rows.append(_label(row, names[i][-40:]) if names else row)
  header = ["image", "predicted mask", "assigned blocks"] + (["true mask"] if true_masks is not None
                                                             else [])
  return save_with_header(np.concatenate(rows, 0), header, path)


def finder_sheet(frames: dict, found: dict, path: str, per_kind: int = 3) -> str:
  """Face finders side by side on the same photos: a column per photo (``per_kind`` of each
  kind of ``frames``), a row per finder of ``found`` (name -> kind -> points or None per
  photo); a found face's points in green, a photo without a face framed in red."""
  rows = []
  for name, by_kind in found.items():
    cells = []
    for kind, images in frames.items():
      for img, pts in list(zip(images, by_kind[kind]))[:per_kind]:
        cell = Image.fromarray(np.asarray(img))
        d = ImageDraw.Draw(cell)
        if pts is None:
          d.rectangle([0, 0, cell.width - 1, cell.height - 1], outline=(255, 0, 0), width=3)
        else:
          for x, y in np.asarray(pts):
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(0, 255, 0))
        cells.append(_pad(np.asarray(cell)))
    rows.append(_label(np.concatenate(cells, 1), f"{name}: green points = face found, red = "
                       f"none ({', '.join(frames)}; {per_kind} each)"))
  with files.atomic_path(path) as tmp:  # never half a picture
    Image.fromarray(np.concatenate(rows, 0)).save(tmp)
  return path


_CURVE_COLOURS = [(90, 90, 90), (230, 150, 40), (40, 110, 200), (40, 170, 90), (180, 60, 160),
                  (200, 40, 40), (120, 80, 30)]


def _legend(d: ImageDraw.ImageDraw, names, x: int, y: int) -> None:
  """One colour swatch and name per series, a line each from ``y`` down, in curve colours."""
  for i, n in enumerate(names):
    d.rectangle([x, y + 14 * i, x + 10, y + 14 * i + 10],
                fill=_CURVE_COLOURS[i % len(_CURVE_COLOURS)])
    d.text((x + 16, y + 14 * i - 1), n, fill=(0, 0, 0))


def curve_figure(panels: dict, xs: list[int], path: str, title: str,
                 log_x: bool = True) -> str:
  """One panel per key of ``panels`` ({panel: {series: [y per x]}}, y in [0, 1]), one line per
  series; x = ``xs`` on a log axis (MegaFace's curve; 0 drawn at the left edge), or a linear
  one (``log_x=False``: training steps)."""
  pw, ph, left, top = 260, 200, 45, 40
  names = list(next(iter(panels.values())))
  img = Image.new("RGB", (left + len(panels) * (pw + 20), top + ph + 40 + 14 * len(names)),
                  (255, 255, 255))
  d = ImageDraw.Draw(img)
  d.text((5, 5), title, fill=(0, 0, 0))
  axis = (lambda v: np.log10(max(v, 1))) if log_x else float  # noqa: E731
  lo, hi = min(map(axis, xs)), max(map(axis, xs))
  hi = max(hi, lo + 1)
  to_x = lambda v: int((axis(v) - lo) / (hi - lo) * (pw - 10)) + 5  # noqa: E731
  ticks = xs if log_x else sorted(set(xs[::max(1, len(xs) // 5)]) | {xs[-1]})
  for k, (panel, series) in enumerate(panels.items()):
    x0 = left + k * (pw + 20)
    d.rectangle([x0, top, x0 + pw, top + ph], outline=(160, 160, 160))
    d.text((x0 + 5, top - 14), panel, fill=(0, 0, 0))
    for t in range(5):
      y = top + ph - int(t / 4 * ph)
      d.line([x0, y, x0 + pw, y], fill=(230, 230, 230))
      if k == 0:
        d.text((5, y - 6), f"{25 * t}%", fill=(0, 0, 0))
    for x in ticks:
      d.text((x0 + to_x(x) - 6, top + ph + 4), f"{x:,}" if x < 1000 or not log_x
             else f"{x // 1000}k", fill=(0, 0, 0))
    for mi, (name, ys) in enumerate(series.items()):
      pts = [(x0 + to_x(x), top + ph - int(y * ph)) for x, y in zip(xs, ys)]
      d.line(pts, fill=_CURVE_COLOURS[mi % len(_CURVE_COLOURS)], width=2)
  _legend(d, names, left, top + ph + 24)
  with files.atomic_path(path) as tmp:  # never half a picture
    img.save(tmp)
  return path


def probes_figure(sets, flags: dict, path: str, num: int = 4) -> str:
  """Rows: pairs; columns: the clean first face, then the second face under every condition
  with the generator blocks counted as occluded outlined in red."""
  boxes = occlusion.block_boxes(sets.pair_faces.shape[1:3])
  rows = []
  for i in range(min(num, len(sets.pairs))):
    cells = [sets.pair_faces[sets.pairs[i, 0]]]
    for cond, occ in sets.occluded_second.items():
      img = Image.fromarray(occ.images[i])
      d = ImageDraw.Draw(img)
      for k, b in enumerate(occlusion.CENTRAL_BLOCKS):
        if flags["second"][cond][i, k]:
          y0, x0, y1, x1 = boxes[b]
          d.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 0, 0))
      cells.append(np.asarray(img))
    rows.append(np.concatenate([np.pad(c, ((2, 2), (2, 2), (0, 0)), constant_values=255)
                                for c in cells], 1))
  return save_with_header(np.concatenate(rows, 0), ["clean"] + list(sets.occluded_second), path)


def forest_figure(rows: list[dict], path: str, title: str, claims: bool = True) -> str:
  """A paired comparison over seeds, one line per row: each seed's difference (small grey
  dots), the pooled difference (a black dot) and its 95% interval (a bar; green when above 0,
  red when below, grey for both when ``claims`` is False: too few seeds), 0 marked. ``rows``:
  {"label", "per_seed", "diff", "lo", "hi"} in points."""
  left, width, line, top = 330, 360, 16, 34
  vals = [v for r in rows for v in (r["lo"], r["hi"], *r["per_seed"])] + [0.0]
  lo, hi = min(vals), max(vals)
  pad = max(0.5, 0.05 * (hi - lo))
  lo, hi = lo - pad, hi + pad
  to_x = lambda v: left + int((v - lo) / (hi - lo) * width)  # noqa: E731
  img = Image.new("RGB", (left + width + 20, top + line * len(rows) + 30), (255, 255, 255))
  d = ImageDraw.Draw(img)
  d.text((5, 5), title, fill=(0, 0, 0))
  step = max(1, int(np.ceil((hi - lo) / 8)))
  for t in range(int(np.ceil(lo)), int(np.floor(hi)) + 1):
    if t % step == 0:
      x = to_x(t)
      d.line([x, top - 4, x, top + line * len(rows)],
             fill=(120, 120, 120) if t == 0 else (230, 230, 230))
      d.text((x - 6, top + line * len(rows) + 4), f"{t:+d}" if t else "0", fill=(0, 0, 0))
  for i, r in enumerate(rows):
    y = top + i * line + line // 2
    d.text((5, y - 6), r["label"], fill=(0, 0, 0))
    colour = (90, 90, 90)
    if claims and (r["lo"] > 0 or r["hi"] < 0):
      colour = (40, 150, 60) if r["lo"] > 0 else (200, 40, 40)
    d.line([to_x(r["lo"]), y, to_x(r["hi"]), y], fill=colour, width=3)
    for v in r["per_seed"]:
      d.ellipse([to_x(v) - 2, y - 6, to_x(v) + 2, y - 2], fill=(150, 150, 150))
    d.ellipse([to_x(r["diff"]) - 3, y - 3, to_x(r["diff"]) + 3, y + 3], fill=(0, 0, 0))
  with files.atomic_path(path) as tmp:  # never half a picture
    img.save(tmp)
  return path


def bar_figure(models: dict, path: str, lo: float = 0.5) -> str:
  """Grouped bars: verification accuracy per condition (clean + occluded), one bar per model."""
  conds = ["clean"] + list(next(iter(models.values()))["occluded"])
  names = list(models)
  gw, bw, h, top = 20 + 16 * len(names), 14, 220, 30
  img = Image.new("RGB", (60 + gw * len(conds), h + 60 + 14 * len(names)), (255, 255, 255))
  d = ImageDraw.Draw(img)
  for t in range(5):  # y grid from lo to 1
    v = lo + (1 - lo) * t / 4
    y = top + h - int((v - lo) / (1 - lo) * h)
    d.line([50, y, img.width - 5, y], fill=(225, 225, 225))
    d.text((5, y - 6), f"{100 * v:.0f}%", fill=(0, 0, 0))
  for ci, c in enumerate(conds):
    x0 = 60 + ci * gw
    for mi, n in enumerate(names):
      r = models[n]["clean"] if c == "clean" else models[n]["occluded"][c]
      y = top + h - int((max(r["accuracy"], lo) - lo) / (1 - lo) * h)
      d.rectangle([x0 + mi * (bw + 2), y, x0 + mi * (bw + 2) + bw, top + h],
                  fill=_CURVE_COLOURS[mi % len(_CURVE_COLOURS)])
    d.text((x0, top + h + 4), c, fill=(0, 0, 0))
  d.text((5, 5), "verification accuracy, second image occluded", fill=(0, 0, 0))
  _legend(d, names, 60, top + h + 22)
  with files.atomic_path(path) as tmp:  # never half a picture
    img.save(tmp)
  return path


def histogram_figure(series: dict, path: str, title: str, bins: int = 20) -> str:
  """Distributions of values in [0, 1] (masks), one outlined histogram per named series, each
  bar the share of its values in that bin, so series of different sizes compare."""
  left, width, height, top = 50, 400, 200, 30
  edges = np.linspace(0.0, 1.0, bins + 1)
  shares = {n: np.histogram(np.clip(np.ravel(v), 0, 1), edges)[0] / max(np.size(v), 1)
            for n, v in series.items()}
  peak = max(max(float(s.max()) for s in shares.values()), 1e-9)
  img = Image.new("RGB", (left + width + 20, top + height + 40 + 14 * len(series)),
                  (255, 255, 255))
  d = ImageDraw.Draw(img)
  d.text((5, 5), title, fill=(0, 0, 0))
  for t in range(5):
    y = top + height - int(height * t / 4)
    d.line([left, y, left + width, y], fill=(225, 225, 225))
    d.text((5, y - 6), f"{100 * peak * t / 4:.1f}%", fill=(0, 0, 0))
  for t in range(0, bins + 1, bins // 4 or 1):
    d.text((left + int(width * t / bins) - 8, top + height + 4), f"{edges[t]:.2f}",
           fill=(0, 0, 0))
  bw = width / bins
  for i, s in enumerate(shares.values()):
    colour = _CURVE_COLOURS[i % len(_CURVE_COLOURS)]
    for b, v in enumerate(s):  # outlines, so every series stays visible where they overlap
      if v == 0:
        continue
      y = top + height - int(height * v / peak)
      d.rectangle([left + int(b * bw) + i, y, left + int((b + 1) * bw) - 1, top + height],
                  outline=colour)
  _legend(d, shares, left, top + height + 22)
  with files.atomic_path(path) as tmp:  # never half a picture
    img.save(tmp)
  return path


def main(argv=None) -> None:
  import argparse  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data.synthetic import SyntheticFaces  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--out", default="occlusions.png")
  p.add_argument("--occluder_dir", default="")
  p.add_argument("--faces", type=int, default=4)
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)
  src = SyntheticFaces(a.faces, 1, seed=a.seed)
  faces = [src[i]["image"] for i in range(a.faces)]
  print(occlusion_sheet(faces, occlusion.OccluderLibrary(a.occluder_dir), a.out, seed=a.seed))


if __name__ == "__main__":
  main()
