"""Real-face detection and embedding with dlib, all weights shipped in packages.

* `HogDetector`: dlib's HOG + linear SVM frontal-face detector, compiled into
  the `dlib-bin` wheel (no model file at all).
* `CnnDetector`: dlib's MMOD CNN detector, weights in `face-recognition-models`.
* `DlibEmbedder`: the 5-point landmark model aligns each face to a 150x150
  chip (25% padding) and dlib's ResNet-34 maps it to a 128-d descriptor
  (both in `face-recognition-models`). dlib's published rule: two
  descriptors of one person lie at Euclidean distance < 0.6.

Boxes everywhere are float (y0, x0, y1, x1) fractions of the frame, as in the
synthetic world. Nothing is downloaded: a missing package is reported by name.
"""

import numpy as np

SAME_PERSON_DISTANCE = 0.6  # dlib's threshold for its ResNet descriptors
CHIP_SIZE = 150
CHIP_PADDING = 0.25
INSTALL_HINT = "pip install 'idjax[real]'"


class MissingPackage(ValueError):
  """An optional package for real faces is not installed (the message names it).
  A ValueError, so CLIs that report bad input as one sentence report this too."""


def _dlib():
  try:
    import dlib  # imported here: an optional dependency (the `real` extra)
  except ImportError:
    raise MissingPackage(
        f"Real-face detection needs the package dlib-bin ({INSTALL_HINT}), "
        "which is not installed."
    ) from None
  return dlib


def _models():
  try:
    import face_recognition_models  # imported here: optional (the `real` extra), 100 MB
  except ImportError:
    raise MissingPackage(
        f"dlib's CNN detector, landmarks and ResNet embedder need the package "
        f"face-recognition-models ({INSTALL_HINT}), which is not installed."
    ) from None
  return face_recognition_models


def available() -> str | None:
  """None if dlib and its models import, else the sentence saying what is missing."""
  try:
    _dlib()
    _models()
  except MissingPackage as e:
    return str(e)
  return None


def to_rect(box, height: int, width: int):
  """A fraction box (y0, x0, y1, x1) -> dlib.rectangle in pixels (inclusive corners)."""
  y0, x0, y1, x1 = np.asarray(box, np.float64)
  return _dlib().rectangle(
      int(round(x0 * width)),
      int(round(y0 * height)),
      int(round(x1 * width)) - 1,
      int(round(y1 * height)) - 1,
  )


def from_rect(rect, height: int, width: int) -> np.ndarray:
  """dlib.rectangle -> fraction box float32 [4], clipped to the frame."""
  box = np.array(
      [
          rect.top() / height,
          rect.left() / width,
          (rect.bottom() + 1) / height,
          (rect.right() + 1) / width,
      ],
      np.float32,
  )
  return np.clip(box, 0.0, 1.0)


class HogDetector:
  """dlib's frontal HOG detector. `upsample` doubles the image that many times
  first (faces below ~80 px need 1)."""

  name = "hog"

  def __init__(self, upsample: int = 1, threshold: float = 0.0):
    self._detector = _dlib().get_frontal_face_detector()
    self.upsample, self.threshold = int(upsample), float(threshold)

  def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [H, W, 3] -> (boxes float32 [n, 4], scores float32 [n])."""
    h, w = frame.shape[:2]
    rects, scores, _ = self._detector.run(
        np.ascontiguousarray(frame), self.upsample, self.threshold
    )
    boxes = [from_rect(r, h, w) for r in rects]
    return (np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32))


class CnnDetector:
  """dlib's MMOD CNN detector (slower on CPU, finds more non-frontal faces)."""

  name = "cnn"

  def __init__(self, upsample: int = 1, threshold: float = 0.0):
    dlib, models = _dlib(), _models()
    self._detector = dlib.cnn_face_detection_model_v1(models.cnn_face_detector_model_location())
    self.upsample, self.threshold = int(upsample), float(threshold)

  def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = frame.shape[:2]
    found = [
        d
        for d in self._detector(np.ascontiguousarray(frame), self.upsample)
        if d.confidence >= self.threshold
    ]
    boxes = [from_rect(d.rect, h, w) for d in found]
    return (
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array([d.confidence for d in found], np.float32),
    )


def make_detector(name: str, upsample: int = 1, threshold: float = 0.0):
  if name == "hog":
    return HogDetector(upsample, threshold)
  if name == "cnn":
    return CnnDetector(upsample, threshold)
  raise ValueError(f"unknown detector {name!r}; expected 'hog' or 'cnn'.")


class DlibEmbedder:
  """128-d dlib ResNet descriptors of faces given by boxes (aligned by 5 landmarks).

  `distance_threshold` is the Euclidean distance under which two descriptors
  are taken for one person (clustering uses it).
  """

  name = "dlib"
  distance_threshold = SAME_PERSON_DISTANCE
  dim = 128

  def __init__(self):
    dlib, models = _dlib(), _models()
    self._landmarks = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
    self._net = dlib.face_recognition_model_v1(models.face_recognition_model_location())

  def chips(self, frame: np.ndarray, boxes) -> np.ndarray:
    """uint8 [n, 150, 150, 3]: the aligned face chips the ResNet sees."""
    dlib = _dlib()
    frame = np.ascontiguousarray(frame)
    h, w = frame.shape[:2]
    shapes = dlib.full_object_detections()
    for box in np.asarray(boxes, np.float32).reshape(-1, 4):
      shapes.append(self._landmarks(frame, to_rect(box, h, w)))
    if not len(shapes):
      return np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
    return np.stack(
        [np.asarray(c) for c in dlib.get_face_chips(frame, shapes, CHIP_SIZE, CHIP_PADDING)]
    )

  def __call__(self, frame: np.ndarray, boxes) -> np.ndarray:
    """uint8 frame [H, W, 3] and boxes [n, 4] -> float32 [n, 128]."""
    chips = self.chips(frame, boxes)
    return self.embed_chips(chips)

  def embed_chips(self, chips) -> np.ndarray:
    """Aligned uint8 chips [n, 150, 150, 3] -> float32 [n, 128]."""
    chips = [np.ascontiguousarray(c) for c in np.asarray(chips, np.uint8)]
    if not chips:
      return np.zeros((0, self.dim), np.float32)
    return np.array(self._net.compute_face_descriptor(chips), np.float32)
