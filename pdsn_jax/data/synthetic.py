"""Built-in SYNTHETIC faces: procedurally drawn, deterministic, rendered at the aligned size.

Nothing here is a real person. Each identity is a set of drawing parameters
(head shape, skin tone, hair, eye/brow/nose/mouth geometry and colours, beard,
marks) drawn from ``(seed, identity)``; each image adds pose, scale and shift
jitter, an illumination gradient, expression (smile, open mouth, raised brows,
blink), background and noise drawn from ``(seed, identity, image)``.

Parts sit where the 5-point template puts them on aligned real faces, so the
5x5 block grid means the same thing: eyes in block row 2, nose row 3, mouth
row 4 (0-based rows of a 112x96 face).
"""

import dataclasses

import numpy as np

from pdsn_jax.data.alignment import TEMPLATE_112x96

_LABEL = "synthetic"
_SKIN = np.array([[255, 224, 196], [241, 194, 125], [224, 172, 105], [198, 134, 66],
                  [141, 85, 36], [92, 57, 32], [255, 205, 178]], np.float32)
_HAIR = np.array([[20, 15, 12], [60, 40, 25], [110, 75, 40], [180, 140, 80], [220, 200, 150],
                  [140, 40, 20], [120, 120, 120], [230, 230, 230]], np.float32)
_IRIS = np.array([[60, 40, 25], [90, 60, 30], [40, 80, 140], [70, 110, 70], [30, 25, 20],
                  [110, 130, 150]], np.float32)


def _soft(sdf: np.ndarray, aa: float = 0.75) -> np.ndarray:
  """Coverage in [0, 1] from a signed distance in pixels (negative inside)."""
  return np.clip(0.5 - sdf / (2 * aa), 0.0, 1.0)


def _ellipse_sdf(x, y, cx, cy, ax, ay, angle=0.0):
  c, s = np.cos(angle), np.sin(angle)
  dx, dy = x - cx, y - cy
  u, v = c * dx + s * dy, -s * dx + c * dy
  r = np.sqrt((u / ax) ** 2 + (v / ay) ** 2)
  return (r - 1.0) * min(ax, ay)


def _segment_sdf(x, y, x0, y0, x1, y1, half_width):
  px, py = x - x0, y - y0
  bx, by = x1 - x0, y1 - y0
  t = np.clip((px * bx + py * by) / max(bx * bx + by * by, 1e-9), 0.0, 1.0)
  return np.hypot(px - t * bx, py - t * by) - half_width


def _blend(canvas, cover, colour):
  # Touch only the bounding box of the covered pixels: most parts are small.
  rows = np.flatnonzero(cover.any(axis=1))
  if rows.size == 0:
    return
  cols = np.flatnonzero(cover.any(axis=0))
  box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
  c = cover[box][..., None]
  canvas[box] += c * (np.asarray(colour, np.float32) - canvas[box])


@dataclasses.dataclass(frozen=True)
class Identity:
  """Drawing parameters of one synthetic person (pixels in 112x96 template space)."""

  skin: np.ndarray
  hair: np.ndarray
  iris: np.ndarray
  lips: np.ndarray
  head_w: float
  head_h: float
  jaw: float
  hairline: float
  hair_style: int
  eye_dx: float
  eye_dy: float
  eye_rx: float
  eye_ry: float
  iris_r: float
  brow_gap: float
  brow_w: float
  brow_tilt: float
  nose_len: float
  nose_w: float
  mouth_w: float
  mouth_dy: float
  lip_h: float
  beard: float
  mark: tuple


def sample_identity(rng: np.random.Generator) -> Identity:
  """Draws one identity's parameters."""
  skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.85, 1.1) + rng.normal(0, 8, 3)
  hair = _HAIR[rng.integers(len(_HAIR))] + rng.normal(0, 10, 3)
  lips = np.clip(skin * np.array([0.85, 0.55, 0.55]) + rng.normal(0, 12, 3), 0, 255)
  mark = (rng.uniform() < 0.35, rng.uniform(25, 72), rng.uniform(45, 100), rng.uniform(1.0, 2.2))
  return Identity(
      skin=np.clip(skin, 0, 255).astype(np.float32),
      hair=np.clip(hair, 0, 255).astype(np.float32),
      iris=_IRIS[rng.integers(len(_IRIS))] + rng.normal(0, 8, 3).astype(np.float32),
      lips=lips.astype(np.float32),
      head_w=rng.uniform(33, 42), head_h=rng.uniform(46, 56), jaw=rng.uniform(0.0, 0.35),
      hairline=rng.uniform(14, 30), hair_style=int(rng.integers(4)),
      eye_dx=rng.uniform(-3.0, 3.0), eye_dy=rng.uniform(-2.5, 2.5),
      eye_rx=rng.uniform(5.0, 8.0), eye_ry=rng.uniform(2.3, 4.0), iris_r=rng.uniform(1.8, 3.0),
      brow_gap=rng.uniform(6.5, 11.0), brow_w=rng.uniform(1.0, 2.4),
      brow_tilt=rng.uniform(-0.25, 0.25),
      nose_len=rng.uniform(14, 24), nose_w=rng.uniform(4.0, 8.0),
      mouth_w=rng.uniform(11, 17), mouth_dy=rng.uniform(-3.0, 3.0), lip_h=rng.uniform(1.5, 3.5),
      beard=float(rng.uniform() < 0.2) * rng.uniform(0.4, 0.9),
      mark=mark,
  )


def render_face(ident: Identity, rng: np.random.Generator,
                image_size: tuple[int, int] = (112, 96), noise: float = 6.0) -> np.ndarray:
  """Renders one uint8 HxWx3 image of ``ident`` with per-image jitter from ``rng``."""
  h, w = image_size
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
  # Draw in template coordinates: map output pixels back through the pose jitter.
  xs, ys = xs * (96.0 / w), ys * (112.0 / h)
  angle = float(np.deg2rad(rng.uniform(-7, 7)))
  scale = rng.uniform(0.93, 1.07)
  cx, cy = 48.0 + rng.uniform(-3, 3), 64.0 + rng.uniform(-3, 3)
  c, s = float(np.cos(angle)), float(np.sin(angle))
  dx, dy = xs - cx, ys - cy
  x = (c * dx + s * dy) / scale + 48.0
  y = (-s * dx + c * dy) / scale + 64.0

  smile = rng.uniform(-0.3, 1.0)
  mouth_open = max(0.0, rng.uniform(-1.0, 1.0)) * 3.0
  brow_raise = rng.uniform(-1.5, 2.5)
  blink = rng.uniform() < 0.1

  bg = rng.uniform(30, 230, 3).astype(np.float32)
  canvas = np.broadcast_to(bg, (h, w, 3)).copy()
  canvas += (rng.uniform(-25, 25, 3) * (ys[..., None] / 112.0 - 0.5)).astype(np.float32)

  # Hair behind the head, head, ears.
  hcx, hcy = 48.0, 60.0
  if ident.hair_style in (1, 3):
    _blend(canvas, _soft(_ellipse_sdf(x, y, hcx, hcy + 4, ident.head_w + 5, ident.head_h + 6)),
           ident.hair * 0.9)
  for side in (-1, 1):
    _blend(canvas, _soft(_ellipse_sdf(x, y, hcx + side * ident.head_w, 57, 4.5, 8)),
           ident.skin * 0.92)
  head = _ellipse_sdf(x, y, hcx, hcy, ident.head_w, ident.head_h)
  # Narrow the jaw: shrink the ellipse width below the mouth.
  jaw = np.clip((y - 80) / 30, 0, 1) * ident.jaw * ident.head_w
  head = np.maximum(head, np.abs(x - hcx) - (ident.head_w - jaw))
  _blend(canvas, _soft(head), ident.skin)
  if ident.beard > 0:
    beard = np.maximum(head, -(y - 86 - ident.mouth_dy))
    _blend(canvas, _soft(beard) * ident.beard, ident.hair * 0.8)
  # Hair on top: the head above the hairline, with a style-dependent fringe.
  line = ident.hairline + (ident.hair_style == 2) * 6 * np.cos((x - hcx) / 14.0)
  top = np.maximum(head - 2.0, y - line)
  _blend(canvas, _soft(top), ident.hair)

  tpl = TEMPLATE_112x96
  for k, side in ((0, -1), (1, 1)):
    ex = tpl[k, 0] + side * ident.eye_dx
    ey = tpl[k, 1] + ident.eye_dy
    ry = ident.eye_ry * (0.25 if blink else 1.0)
    _blend(canvas, _soft(_ellipse_sdf(x, y, ex, ey, ident.eye_rx, ry)),
           np.array([245, 245, 240], np.float32))
    if not blink:
      iris = np.maximum(_ellipse_sdf(x, y, ex, ey, ident.iris_r, ident.iris_r),
                        _ellipse_sdf(x, y, ex, ey, ident.eye_rx, ry))
      _blend(canvas, _soft(iris), ident.iris)
      _blend(canvas, _soft(_ellipse_sdf(x, y, ex, ey, 0.9, 0.9)), np.zeros(3, np.float32))
    by = ey - ident.brow_gap - brow_raise
    tilt = side * ident.brow_tilt * ident.eye_rx
    brow = _segment_sdf(x, y, ex - 1.2 * ident.eye_rx, by + tilt, ex + 1.2 * ident.eye_rx,
                        by - tilt, ident.brow_w)
    _blend(canvas, _soft(brow), ident.hair * 0.7)

  # Nose: a shaded ridge from between the eyes to the tip, and nostrils.
  nx, ny = tpl[2, 0], tpl[2, 1] + ident.eye_dy * 0.5
  ridge = _segment_sdf(x, y, nx, ny - ident.nose_len, nx, ny, ident.nose_w * 0.35)
  _blend(canvas, _soft(ridge, 2.0) * 0.35, ident.skin * 0.7)
  for side in (-1, 1):
    _blend(canvas, _soft(_ellipse_sdf(x, y, nx + side * ident.nose_w * 0.6, ny + 1.5, 1.6, 1.0)),
           ident.skin * 0.35)

  # Mouth: an arc bent by the smile, opening with the expression.
  mx = 0.5 * (tpl[3, 0] + tpl[4, 0])
  my = 0.5 * (tpl[3, 1] + tpl[4, 1]) + ident.mouth_dy
  u = (x - mx) / ident.mouth_w
  arc = my - smile * 3.0 * (u**2)
  lips = np.maximum(np.abs(y - arc) - (ident.lip_h + mouth_open * 0.5), np.abs(u) * 12 - 12)
  _blend(canvas, _soft(lips), ident.lips)
  if mouth_open > 0.5:
    gap = np.maximum(np.abs(y - arc) - mouth_open * 0.4, np.abs(u) * 12 - 10)
    _blend(canvas, _soft(gap), np.array([60, 20, 25], np.float32))

  if ident.mark[0]:
    _, mxk, myk, mr = ident.mark
    _blend(canvas, _soft(_ellipse_sdf(x, y, mxk, myk, mr, mr)), ident.skin * 0.45)

  # Illumination: a linear gradient in a random direction, then sensor noise.
  theta = rng.uniform(0, 2 * np.pi)
  grad = (np.cos(theta) * (xs - 48) / 48 + np.sin(theta) * (ys - 56) / 56)
  gain = rng.uniform(0.75, 1.15) * (1.0 + rng.uniform(0.0, 0.35) * grad)
  canvas *= gain[..., None]
  canvas += rng.normal(0.0, noise, canvas.shape)
  return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


class SyntheticFaces:
  """grain random-access source of SYNTHETIC faces: identities [first, first + n) x m images.

  Record i is image ``i % m`` of identity ``first + i // m``; labels are
  ``i // m`` (0-based within this source). Held-out evaluation identities are a
  second source with ``first_identity`` past the training ones.
  """

  description = _LABEL

  def __init__(self, num_identities: int, images_per_identity: int, seed: int = 0,
               first_identity: int = 0, image_size: tuple[int, int] = (112, 96)):
    if num_identities < 1 or images_per_identity < 1:
      raise ValueError("synthetic faces need num_identities >= 1 and images_per_identity >= 1, "
                       f"got {num_identities} and {images_per_identity}")
    self.num_identities = num_identities
    self.images_per_identity = images_per_identity
    self.seed = seed
    self.first_identity = first_identity
    self.image_size = tuple(image_size)
    self.labels = np.repeat(np.arange(num_identities, dtype=np.int32), images_per_identity)
    self._images = None

  @property
  def num_classes(self) -> int:
    return self.num_identities

  def __len__(self) -> int:
    return self.num_identities * self.images_per_identity

  def identity(self, label: int) -> Identity:
    return sample_identity(np.random.default_rng([self.seed, 0, self.first_identity + label]))

  def render(self, index: int) -> np.ndarray:
    label, k = divmod(index, self.images_per_identity)
    rng = np.random.default_rng([self.seed, 1, self.first_identity + label, k])
    return render_face(self.identity(label), rng, self.image_size)

  def cache(self) -> "SyntheticFaces":
    """Renders every image once into memory (uint8), so epochs after the first cost nothing."""
    if self._images is None:
      self._images = np.stack([self.render(i) for i in range(len(self))])
    return self

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"synthetic record {index} out of range [0, {len(self)})")
    label = index // self.images_per_identity
    if self._images is not None:
      return {"image": self._images[index], "label": np.int32(label)}
    return {"image": self.render(index), "label": np.int32(label)}

  def __repr__(self) -> str:
    return (f"SyntheticFaces(SYNTHETIC, {self.num_identities} ids x {self.images_per_identity}"
            f" imgs, first={self.first_identity}, seed={self.seed})")
