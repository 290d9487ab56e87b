"""Training samples and loss for fine-tuning BlazeFace's short-range model on occluded, grey,
low-resolution faces (the ``face_finder`` stage).

The shipped model finds a grey 42x30 face behind a scarf about as often as a head whose face
was erased (``benchmarks/blazeface_views.py``): no threshold or extra view separates them. So
the model itself is tuned, by distillation: the *teacher* is the shipped model on a clean
photo, the *student* the model being tuned on the same photo, framed the same way, with an
occluder pasted and made grey, low-resolution or differently lit. The framing is identical, so
the teacher's per-anchor scores, boxes and keypoints are the student's targets as they are: no
anchor matching, and the keypoints keep the meaning alignment relies on. Photos whose face was
erased (the landmark box filled with the photo's mean colour) are negatives: every anchor's
target score is 0.
"""

import numpy as np
from PIL import Image

from pdsn_jax.data import alignment, occlusion, placement

KINDS = ("clean", "mask", "scarf", "sunglasses", "erased")
SIDE = 128  # the short-range model's input


def erase_face(photo: np.ndarray, points: np.ndarray) -> np.ndarray:
  """The photo with its face (the 5 points' box, grown to cover brows and chin) filled with
  the photo's mean colour: a head with no face in it."""
  c, half = points.mean(0), 0.8 * (points.max(0) - points.min(0)).max() + 4
  x0, y0 = np.maximum((c - half).astype(int), 0)
  x1, y1 = (c + half).astype(int)
  out = photo.copy()
  out[y0:y1, x0:x1] = photo.reshape(-1, 3).mean(0).astype(np.uint8)
  return out


def drawable(kind: str, library: occlusion.OccluderLibrary) -> bool:
  """Whether ``library`` has what ``kind`` pastes (a scarf is a stretched mask)."""
  need = {"mask": "mask", "scarf": "mask", "sunglasses": "sunglasses"}.get(kind)
  return need is None or need in library.available()


class TuningSample:
  """grain transform: a record with ``image`` (a raw RGB photo; or an aligned face) and
  ``points`` (its 5 landmarks; absent: the library's aligned template) becomes ``teacher`` (the clean
  photo, framed) and ``image`` (the same framing, occluded and degraded), both (SIDE, SIDE, 3)
  float32 in [-1, 1] as the model reads them, and ``negative`` (the face was erased).

  ``kind_probs``: the share of each of KINDS; the face spans ``face_px`` pixels of the frame
  (2.2 eye distances, drawn uniformly) off-centre by up to 0.3 of that; ``grey_prob`` grey;
  ``lowres_prob``: the face brought down to ``lowres_px`` pixels wide and back up (AR's
  photos are 30 px wide); contrast and brightness always vary; ``cloth_prob``: the share of
  scarves that are drawn cloth, half of it knitted (``placement.cloth``), not a mask file;
  ``erased_occluder_prob``: the share of erased faces that get an occluder pasted where the
  face was (a mask, scarf or sunglasses on a head without a face: still a negative), so the
  occluder itself is not what makes a face."""

  def __init__(self, library: occlusion.OccluderLibrary, kind_probs=(0.2, 0.25, 0.2, 0.2, 0.15),
               face_px=(24.0, 80.0), grey_prob=0.5, lowres_prob=0.5, lowres_px=(16.0, 48.0),
               cloth_prob=0.0, erased_occluder_prob=0.0):
    for name, v in (("cloth_prob", cloth_prob), ("erased_occluder_prob", erased_occluder_prob)):
      if not 0.0 <= v <= 1.0:
        raise ValueError(f"face_finder.{name}={v}: a share in [0, 1]")
    self.cloth_prob, self.erased_occluder_prob = cloth_prob, erased_occluder_prob
    if len(kind_probs) != len(KINDS) or abs(sum(kind_probs) - 1) > 1e-6:
      raise ValueError(f"face_finder.kind_probs={tuple(kind_probs)}: one share per kind "
                       f"{KINDS}, summing to 1")
    probs = np.asarray(kind_probs, np.float64) * [drawable(k, library) for k in KINDS]
    self.library, self.kind_probs = library, probs / probs.sum()  # kinds it cannot draw: none
    self.face_px, self.lowres_px = tuple(face_px), tuple(lowres_px)
    self.grey_prob, self.lowres_prob = grey_prob, lowres_prob

  def __call__(self, rec: dict, rng: np.random.Generator) -> dict:
    photo = np.asarray(rec["image"])
    points = (np.asarray(rec["points"], np.float64).reshape(5, 2) if "points" in rec else
              alignment.template_for(photo.shape[:2], self.library.face_template))
    kind = KINDS[rng.choice(len(KINDS), p=self.kind_probs)]
    eyes = float(np.linalg.norm(points[1] - points[0]))
    face = rng.uniform(*self.face_px)
    s = face / (2.2 * max(eyes, 1.0))
    c = points.mean(0) + rng.uniform(-0.3, 0.3, 2) * face / s
    frame = np.array([[s, 0.0, SIDE / 2 - s * c[0]], [0.0, s, SIDE / 2 - s * c[1]]])
    occluded = self.occlude(kind, photo, points, rng)
    teacher = alignment.warp_affine(photo, frame, (SIDE, SIDE))
    student = alignment.warp_affine(occluded, frame, (SIDE, SIDE))
    rec = {k: v for k, v in rec.items() if k not in ("image", "points")}
    rec["teacher"] = teacher.astype(np.float32) / 127.5 - 1.0
    rec["image"] = self.degrade(student, face, rng).astype(np.float32) / 127.5 - 1.0
    rec["negative"] = np.bool_(kind == "erased")
    return rec

  def occlude(self, kind: str, photo: np.ndarray, points: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
    """The raw photo as the student sees it for ``kind``, before framing and degrading."""
    if kind in ("mask", "sunglasses", "scarf"):
      return placement.occlude_photo(photo, points, rng, self.library, kind, self.cloth_prob)
    if kind != "erased":
      return photo
    out = erase_face(photo, points)
    pasted = [k for k in ("mask", "scarf", "sunglasses") if drawable(k, self.library)]
    # no draw at 0: old runs' streams kept
    if self.erased_occluder_prob > 0 and pasted and rng.uniform() < self.erased_occluder_prob:
      out = placement.occlude_photo(out, points, rng, self.library,
                                    pasted[rng.integers(len(pasted))], self.cloth_prob)
    return out

  def degrade(self, x: np.ndarray, face: float, rng: np.random.Generator) -> np.ndarray:
    """Grey, low resolution (relative to the face's size in the frame) and light."""
    if rng.uniform() < self.lowres_prob:
      small = round(SIDE * rng.uniform(*self.lowres_px) / face)
      if small < SIDE:
        x = np.asarray(Image.fromarray(x).resize((max(small, 8),) * 2, Image.BILINEAR)
                       .resize((SIDE, SIDE), Image.BICUBIC))
    y = x.astype(np.float32)
    if rng.uniform() < self.grey_prob:
      y = np.repeat((y @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 3, -1)
    y = (y - 128) * rng.uniform(0.6, 1.2) + 128 + rng.uniform(-30, 30)
    return np.clip(np.rint(y), 0, 255)


def distillation_loss(student, teacher, negative, reg_weight: float = 0.05):
  """(loss, (score term, box term)) of the student's outputs against the teacher's.

  ``student``/``teacher``: (regressors (B, A, 16), logits (B, A, 1)); ``negative``: (B,).
  Score: each anchor's sigmoid cross-entropy against the teacher's probability (0 on
  negatives), summed over anchors, on the photos where the teacher found a face or that are
  negatives (a face the teacher missed teaches nothing). Box and keypoints: L1 in pixels on
  the anchors the teacher scores above 0.5."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  (s_reg, s_logit), (t_reg, t_logit) = student, teacher
  t_logit, s_logit = t_logit[..., 0], s_logit[..., 0]
  target = jnp.where(negative[:, None], 0.0, jax.nn.sigmoid(t_logit))
  use = (negative | (jnp.max(t_logit, -1) > 0)).astype(jnp.float32)
  bce = optax.sigmoid_binary_cross_entropy(s_logit, target).sum(-1)
  score = jnp.sum(bce * use) / jnp.maximum(use.sum(), 1.0)
  pos = ((target > 0.5) & ~negative[:, None]).astype(jnp.float32)
  box = jnp.sum(jnp.abs(s_reg - t_reg).sum(-1) * pos) / jnp.maximum(pos.sum(), 1.0)
  return score + reg_weight * box, (score, box)
