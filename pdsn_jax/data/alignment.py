"""5-point similarity alignment to the 112x96 template (numpy; used in data transforms)."""

import numpy as np

# The 112x112 ArcFace template shifted 8 px left: eye centres (image left, image
# right), nose tip, mouth corners (image left, image right), in (x, y) pixels.
TEMPLATE_112x96 = np.array(
    [[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366],
     [33.5493, 92.3655], [62.7299, 92.2041]], dtype=np.float64)
TEMPLATE_SIZE = (112, 96)  # (height, width)

# Where the same 5 points (eye centres, nose tip, mouth corners) land in dlib's
# 150x150 face chip (padding 0.25, cut from dlib's own 5-point predictor): the
# mean over 1,500 LFW faces of ../shared/data/lfw, fitted by
# benchmarks/fit_dlib_chip.py (per-point std 2.8-7.3 px: the two landmark
# models disagree that much face to face).
DLIB_CHIP_TEMPLATE_150 = np.array(
    [[47.5476, 46.3294], [100.3063, 45.9795], [74.0379, 81.3230],
     [51.9898, 103.9618], [96.7743, 103.7377]], dtype=np.float64)
# Where BlazeFace's 4 keypoints (eyes, nose tip, mouth centre: faces.blazeface) land in the
# 112x96 template: the mean over 1,971 CelebA photos aligned by their landmarks TSV, fitted by
# benchmarks/fit_blazeface_points.py (per-point std 3.3, 3.4, 7.1, 3.5 px). Its mouth centre
# needs no visible mouth corners, so a masked face aligns as a bare one does.
BLAZEFACE_112x96 = np.array(
    [[29.9773, 53.2891], [65.9508, 53.2264], [48.0177, 74.6144], [48.1269, 92.6881]],
    dtype=np.float64)
TEMPLATES = {"arcface": (TEMPLATE_112x96, TEMPLATE_SIZE),
             "dlib_chip": (DLIB_CHIP_TEMPLATE_150, (150, 150))}


def template_for(image_size: tuple[int, int], kind: str = "arcface",
                 num_points: int = 5) -> np.ndarray:
  """The ``kind`` template ("arcface" 112x96, "dlib_chip" 150x150) scaled to ``image_size``:
  its 5 points, or with ``num_points=4`` where BlazeFace's 4 keypoints land in it."""
  if kind not in TEMPLATES:
    raise ValueError(f"data.alignment={kind!r} is not one of {tuple(TEMPLATES)}")
  pts, (th, tw) = TEMPLATES[kind]
  if num_points == 4:  # the arcface frame's 4 points, moved into this template's frame
    m = similarity_transform(TEMPLATE_112x96, pts)
    pts = BLAZEFACE_112x96 @ m[:, :2].T + m[:, 2]
  elif num_points != 5:
    raise ValueError(f"{num_points} landmarks: expected 5 (eyes, nose, mouth corners) or 4 "
                     "(eyes, nose, mouth centre)")
  h, w = image_size
  return pts * np.array([w / tw, h / th])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst.

  Umeyama's closed form. Args: (N, 2) point arrays, N >= 2. Returns the 2x3
  matrix A with dst ~= A @ [x, y, 1].
  """
  src = np.asarray(src, np.float64)
  dst = np.asarray(dst, np.float64)
  if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
    raise ValueError(f"need two (N>=2, 2) point arrays, got {src.shape} and {dst.shape}")
  mu_s, mu_d = src.mean(0), dst.mean(0)
  s, d = src - mu_s, dst - mu_d
  cov = d.T @ s / len(src)
  u, sig, vt = np.linalg.svd(cov)
  sign = np.eye(2)
  if np.linalg.det(u) * np.linalg.det(vt) < 0:
    sign[1, 1] = -1.0
  rot = u @ sign @ vt
  scale = np.trace(np.diag(sig) @ sign) / max((s**2).sum() / len(src), 1e-12)
  t = mu_d - scale * rot @ mu_s
  return np.concatenate([scale * rot, t[:, None]], axis=1)


def warp_affine(image: np.ndarray, matrix: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
  """Bilinear warp of an HxWxC image by the forward 2x3 ``matrix``; border replicated."""
  h, w = out_size
  full = np.vstack([matrix, [0.0, 0.0, 1.0]])
  inv = np.linalg.inv(full)[:2]
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
  sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
  sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
  img = image.astype(np.float32)
  if img.ndim == 2:
    img = img[..., None]
  ih, iw = img.shape[:2]
  sx = np.clip(sx, 0, iw - 1)
  sy = np.clip(sy, 0, ih - 1)
  x0 = np.floor(sx).astype(np.int64)
  y0 = np.floor(sy).astype(np.int64)
  x1 = np.minimum(x0 + 1, iw - 1)
  y1 = np.minimum(y0 + 1, ih - 1)
  fx = (sx - x0)[..., None].astype(np.float32)
  fy = (sy - y0)[..., None].astype(np.float32)
  top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
  bot = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
  out = top * (1 - fy) + bot * fy
  if np.issubdtype(image.dtype, np.integer):
    out = np.clip(np.rint(out), 0, 255).astype(image.dtype)
  return out


def align_face(image: np.ndarray, landmarks: np.ndarray | None, image_size: tuple[int, int],
               template: str = "arcface"):
  """Aligns a face by its 5 landmarks (or BlazeFace's 4) to ``template``; without landmarks, a
  centre crop to the aspect, resized."""
  if landmarks is not None:
    pts = np.asarray(landmarks, np.float64).reshape(-1, 2)
    m = similarity_transform(pts, template_for(image_size, template, len(pts)))
    return warp_affine(image, m, image_size)
  return warp_affine(image, centre_crop_matrix(image.shape[:2], image_size), image_size)


def centre_crop_matrix(size: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
  """The 2x3 matrix of a centre crop of an image of ``size`` to the aspect of ``image_size``,
  resized to it."""
  h, w = size
  th, tw = image_size
  ch, cw = (h, int(round(h * tw / th))) if w * th >= h * tw else (int(round(w * th / tw)), w)
  y0, x0 = (h - ch) / 2, (w - cw) / 2
  return np.array([[tw / cw, 0, -x0 * tw / cw], [0, th / ch, -y0 * th / ch]])
