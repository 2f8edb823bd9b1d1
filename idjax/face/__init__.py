"""Face encoders: crops, the project's ResNet + ArcFace, frozen use, verification."""

from idjax.face.crop import crop_and_resize
from idjax.face.encoder import FaceEncoder
from idjax.face.frozen import FrozenFaceEncoder, save_face_encoder
from idjax.face.verification import verification_metrics
