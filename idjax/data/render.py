"""Rasterises cartoon heads with analytic soft edges, vectorised over frames.

Geometry lives in *head units*: for one character, `u` (right) and `v` (down)
are pixel positions relative to the centre of its square face box, divided by
the box side. Every frame may have its own box, pose and expression, so all
per-frame quantities are arrays shaped `[T, 1, 1]` that broadcast against the
pixel grid `[T, h, w]`.

Anti-aliasing is analytic: each shape gives an (approximate) signed distance
`d` in head units, and its coverage is a one-pixel linear ramp,
`clip(0.5 - d / pixel, 0, 1)`. Only +, -, *, /, sqrt and clip touch pixels,
all correctly rounded in IEEE float32, so the bytes do not depend on the
machine's libm or SIMD width.
"""

import functools

import numpy as np

F32 = np.float32

# Fixed colours (RGB in [0, 1]).
_EYE_WHITE = np.array([0.97, 0.97, 0.95], F32)
_PUPIL = np.array([0.05, 0.04, 0.05], F32)
_MOUTH_INSIDE = np.array([0.35, 0.06, 0.09], F32)
_LIP = np.array([0.70, 0.22, 0.24], F32)


def _coverage(d, pixel):
  """Fraction of a pixel inside the shape with signed distance d (head units)."""
  a = F32(0.5) - d / pixel
  # Raw ufuncs: np.clip's Python wrapper costs more than the maths on small arrays.
  np.maximum(a, F32(0.0), out=a)
  return np.minimum(a, F32(1.0), out=a)


def _ellipse_distance(u, v, cu, cv, a, b, bounded=True):
  """First-order signed distance to an axis-aligned ellipse (exact for circles).

  bounded=False skips the bounding-box correction, which only matters for
  thin ellipses (the face, hair and nose are never thin).
  """
  x = (u - cu) / a
  y = (v - cv) / b
  f = x * x + y * y - F32(1.0)
  gx = x / a
  gy = y / b
  d = f / (F32(2.0) * np.sqrt(gx * gx + gy * gy) + F32(1e-6))
  if not bounded:
    return d
  # The first-order estimate is far too small away from thin ellipses; the
  # bounding box bounds it.
  return np.maximum(d, np.maximum(np.abs(u - cu) - a, np.abs(v - cv) - b))


def _circle_distance(u, v, cu, cv, r):
  du = u - cu
  dv = v - cv
  return np.sqrt(du * du + dv * dv) - r


def _paint(canvas, alpha, colour):
  """Composites `colour` over planar canvas [3,T,h,w] with coverage alpha [T,h,w] in place.

  The canvas is planar (channels first) so every NumPy loop runs over whole
  rows; an RGB-last layout makes the inner loops three elements long.
  """
  for ch in range(3):
    plane = canvas[ch]
    plane += alpha * (colour[ch] - plane)


class _Head:
  """A character's pixel grid in head units, with the rows/columns a shape touches."""

  def __init__(self, canvas, u, v, pixel):
    self.canvas, self.u, self.v, self.pixel = canvas, u, v, pixel
    # Pixel j of the window sits at u[:, :, :1] + j * pixel (same for v).
    self._u0, self._v0 = u[:, :, :1], v[:, :1, :]

  def _span(self, lo, hi, origin, size):
    first = int(np.floor(((lo - origin) / self.pixel).min())) - 1
    last = int(np.ceil(((hi - origin) / self.pixel).max())) + 1
    first, last = max(first, 0), min(last + 1, size)
    return slice(first, last) if last > first else None

  def region(self, u0, u1, v0, v1):
    """Slices (rows, cols) of the pixels within a pixel of the box on any frame, or None."""
    cols = self._span(u0, u1, self._u0, self.u.shape[2])
    rows = self._span(v0, v1, self._v0, self.v.shape[1])
    return None if cols is None or rows is None else (rows, cols)

  def paint(self, where, distance_fn, colour, clip=None):
    """Paints the shape `distance_fn(u, v)` inside `where`; returns its coverage there.

    clip: optional full-window coverage [T,h,w] that the shape is confined to.
    """
    if where is None:
      return None
    rows, cols = where
    alpha = _coverage(distance_fn(self.u[:, :, cols], self.v[:, rows, :]), self.pixel)
    if clip is not None:
      alpha = alpha * clip[:, rows, cols]
    _paint(self.canvas[:, :, rows, cols], alpha, colour)
    return alpha


def draw_head(canvas, u, v, pixel, ident, pose):
  """Paints one head onto `canvas` in place and returns its coverage [T,h,w].

  Args:
    canvas: float32 [3, T, h, w] window of the frames, planar RGB in [0, 1].
    u, v: float32 [T, 1, w] and [T, h, 1] head-unit pixel coordinates.
    pixel: float32 [T, 1, 1], one pixel in head units.
    ident: an `IdentityParams` (world.py).
    pose: dict of float32 [T, 1, 1] arrays: `turn` in [-1, 1] (head turned
      right is positive), `smile`, `mouth_open` in [0, 1], `eye_open` in [0, 1].

  Returns:
    float32 [T, h, w] coverage of the head (face, hair and everything on it).
  """
  head = _Head(canvas, u, v, pixel)
  full = (slice(None), slice(None))
  turn = pose["turn"]
  # A head turn moves the inner features sideways and narrows the face; the
  # hair mass moves a little the other way, like a rotating sphere would.
  shift = F32(0.07) * turn
  face_cu = F32(0.025) * turn
  face_a = F32(ident.face_width) * (F32(1.0) - F32(0.10) * np.abs(turn))
  face_cv = F32(0.07)
  face_b = F32(ident.face_height)
  jaw_a = face_a * F32(ident.jaw)
  skin = np.asarray(ident.skin_rgb, F32)
  hair = np.asarray(ident.hair_rgb, F32)
  style = ident.hair_style

  # Face: wider cheekbones on top, the jaw below the face centre.
  def face_distance(u, v):
    return _ellipse_distance(u, v, face_cu, face_cv, np.where(v > face_cv, jaw_a, face_a), face_b, False)

  # Hair mass behind the face (its silhouette), then the hairline in front.
  hair_cu = -F32(0.015) * turn
  vol = F32(ident.hair_volume)
  if style == "curly":
    cap_a, cap_b, cap_cv = face_a * F32(1.45) * vol, F32(0.40) * vol, F32(-0.03)
  else:
    cap_a, cap_b, cap_cv = face_a * F32(1.12) * vol, F32(0.41) * vol, F32(0.03)

  def cap_distance(u, v):
    return _ellipse_distance(u, v, hair_cu, cap_cv, cap_a, cap_b, False)

  def back_distance(u, v):
    if style == "short" or style == "bangs":  # short hair stops at ear level
      return np.maximum(cap_distance(u, v), v - F32(0.06))
    if style == "long":  # the cap plus a curtain down to the shoulders
      curtain = np.maximum(np.abs(u - hair_cu) - cap_a * F32(1.05), np.abs(v - F32(0.22)) - F32(0.22))
      return np.minimum(cap_distance(u, v), curtain)
    return cap_distance(u, v)

  face = _coverage(face_distance(u, v), pixel)
  coverage = face
  if style != "bald":
    hair_back = head.paint(full, back_distance, hair)
    coverage = np.maximum(face, hair_back)
  _paint(canvas, face, skin)

  # Freckles: a fixed constellation on the cheeks.
  if ident.freckles:
    r = F32(0.014)
    dots = [(F32(fu), F32(fv)) for fu, fv in ident.freckle_offsets]

    def freckle_distance(u, v):  # one shape: the nearest dot
      return functools.reduce(np.minimum, [_circle_distance(u, v, fu + shift, fv, r) for fu, fv in dots])

    lo_u, hi_u = min(d[0] for d in dots), max(d[0] for d in dots)
    lo_v, hi_v = min(d[1] for d in dots), max(d[1] for d in dots)
    head.paint(head.region(lo_u + shift - r, hi_u + shift + r, lo_v - r, hi_v + r),
               freckle_distance, skin * F32(0.68), clip=face)

  mouth_cv = F32(ident.mouth_y)
  mouth_a = F32(ident.mouth_width)
  beard_colour = hair * F32(0.9)
  if ident.beard == "beard":
    head.paint(head.region(face_cu - face_a, face_cu + face_a, F32(0.13), face_cv + face_b),
               lambda u, v: np.maximum(face_distance(u, v), F32(0.13) - v), beard_colour)
  elif ident.beard == "moustache":
    ma, mb, mv = mouth_a * F32(0.95), F32(0.022), mouth_cv - F32(0.035)
    head.paint(head.region(shift - ma, shift + ma, mv - mb, mv + mb),
               lambda u, v: _ellipse_distance(u, v, shift, mv, ma, mb), beard_colour)

  # Mouth: a dark opening, and a lip curve whose corners rise with the smile.
  mouth_region = head.region(shift - mouth_a, shift + mouth_a,
                             mouth_cv - F32(0.06), mouth_cv + F32(0.07))
  open_a, open_b = mouth_a * F32(0.62), F32(0.055) * pose["mouth_open"] + F32(1e-3)
  open_v = mouth_cv + F32(0.008)
  head.paint(mouth_region, lambda u, v: _ellipse_distance(u, v, shift, open_v, open_a, open_b),
             _MOUTH_INSIDE)

  def lip_distance(u, v):
    x = (u - shift) / mouth_a
    curve = mouth_cv - pose["smile"] * F32(0.045) * (x * x - F32(0.4))
    return np.maximum(np.abs(v - curve) - F32(0.011), np.abs(u - shift) - mouth_a)

  head.paint(mouth_region, lip_distance, _LIP)

  # Nose: a shaded oval.
  ns = F32(ident.nose_size)
  nu, nv = shift * F32(1.2), F32(0.135)
  head.paint(head.region(nu - ns, nu + ns, nv - ns, nv + ns),
             lambda u, v: _ellipse_distance(u, v, nu, nv, ns * F32(0.7), ns, False), skin * F32(0.78))

  # Eyes: white, iris (clipped to the white), pupil; blinks squash the height.
  er = F32(ident.eye_size)
  ev = F32(ident.eye_y)
  eye_open = np.maximum(pose["eye_open"], F32(0.08))
  iris_rgb = np.asarray(ident.eye_rgb, F32)
  brow_rgb = hair * F32(0.75) if style != "bald" else skin * F32(0.55)
  brow_b, brow_v = F32(ident.brow_thickness), ev - er - F32(0.035)
  for side in (-1.0, 1.0):
    eu = F32(side * ident.eye_spacing) + shift
    gaze = eu + F32(0.25) * er * turn
    where = head.region(eu - er * F32(1.3), eu + er * F32(1.3), ev - er, ev + er)
    white_a, white_b = er * F32(1.3), er * F32(0.9) * eye_open
    white = head.paint(where, lambda u, v: _ellipse_distance(u, v, eu, ev, white_a, white_b), _EYE_WHITE)
    if white is not None:
      rows, cols = where
      us, vs = u[:, :, cols], v[:, rows, :]
      sub = canvas[:, :, rows, cols]
      _paint(sub, _coverage(_circle_distance(us, vs, gaze, ev, er * F32(0.78)), pixel) * white, iris_rgb)
      _paint(sub, _coverage(_circle_distance(us, vs, gaze, ev, er * F32(0.36)), pixel) * white, _PUPIL)
    ba = er * F32(1.45)
    head.paint(head.region(eu - ba, eu + ba, brow_v - brow_b, brow_v + brow_b),
               lambda u, v: _ellipse_distance(u, v, eu, brow_v, ba, brow_b), brow_rgb)

  if style != "bald":
    # Hairline in front of the forehead; bangs come down to the brows.
    line = F32(ident.hairline)
    head.paint(head.region(hair_cu - cap_a, hair_cu + cap_a, cap_cv - cap_b, line),
               lambda u, v: np.maximum(cap_distance(u, v), v - line), hair)

  if ident.glasses:
    glasses_rgb = np.asarray(ident.glasses_rgb, F32)
    gr = er * F32(1.9)
    sp = F32(ident.eye_spacing)

    def glasses_distance(u, v):
      rings = [np.abs(_circle_distance(u, v, F32(s) * sp + shift, ev, gr)) - F32(0.014)
               for s in (-1.0, 1.0)]
      bridge = np.maximum(np.abs(u - shift) - sp + gr, np.abs(v - ev + F32(0.01)) - F32(0.011))
      return np.minimum(np.minimum(rings[0], rings[1]), bridge)

    reach = sp + gr + F32(0.02)
    head.paint(head.region(shift - reach, shift + reach, ev - gr - F32(0.02), ev + gr + F32(0.02)),
               glasses_distance, glasses_rgb)
  return coverage


def background(height, width, top, bottom, blob_centre, blob_radius, blob_rgb):
  """Per-frame backgrounds: a vertical gradient plus one soft disc.

  Args:
    top, bottom, blob_rgb: float32 [T, 3]; blob_centre [T, 2] (y, x) and
      blob_radius [T] in frame fractions.
  Returns:
    float32 [3, T, H, W], planar RGB.
  """
  ys = ((np.arange(height, dtype=F32) + F32(0.5)) / F32(height))[None, None, :, None]
  xs = ((np.arange(width, dtype=F32) + F32(0.5)) / F32(width))[None, :]
  top = top.T[:, :, None, None]
  bottom = bottom.T[:, :, None, None]
  canvas = np.empty((3, top.shape[1], height, width), F32)
  canvas[...] = top + ys * (bottom - top)
  # Only the rows and columns that the disc can touch on some frame.
  pixel = F32(1.0 / max(height, width))
  reach = blob_radius + F32(2.0) * pixel
  y0, y1 = _span(blob_centre[:, 0] - reach, blob_centre[:, 0] + reach, height)
  x0, x1 = _span(blob_centre[:, 1] - reach, blob_centre[:, 1] + reach, width)
  if y1 > y0 and x1 > x0:
    d = _circle_distance(xs[:, x0:x1], ys[0, :, y0:y1], blob_centre[:, 1, None, None],
                         blob_centre[:, 0, None, None], blob_radius[:, None, None])
    _paint(canvas[:, :, y0:y1, x0:x1], _coverage(d, pixel), blob_rgb.T[:, :, None, None])
  return canvas


def _span(lo, hi, size):
  """Pixel index range [a, b) covering fractions lo.min()..hi.max() of `size` pixels."""
  a = int(np.clip(np.floor(float(lo.min()) * size), 0, size))
  b = int(np.clip(np.ceil(float(hi.max()) * size), 0, size))
  return a, b


def light(canvas, brightness, cast, slope):
  """Applies lighting to planar [3,T,H,W] in place: brightness [T], colour cast [T, 3], slope [T]."""
  width = canvas.shape[3]
  xs = ((np.arange(width, dtype=F32) + F32(0.5)) / F32(width) - F32(0.5))[None, None, None, :]
  gain = (brightness[:, None] * cast).T[:, :, None, None]
  canvas *= gain * (F32(1.0) + slope[None, :, None, None] * xs)


def to_uint8(canvas):
  """Planar float [3,T,H,W] in [0, 1] -> uint8 [T,H,W,3]."""
  # Adding 0.5 and truncating rounds half up; cheaper than np.round.
  x = canvas * F32(255.0)
  x += F32(0.5)
  np.clip(x, F32(0.0), F32(255.0), out=x)
  out = np.empty(canvas.shape[1:] + (3,), np.uint8)
  for ch in range(3):
    out[..., ch] = x[ch]
  return out
