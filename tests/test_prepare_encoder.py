"""Clustering the synthetic MP4s with a project face encoder trained tiny here (slow).

The encoder is trained (ArcFace, 60 steps) on world renders of the same
identities the folder shows, from other scenes than its videos; then
`python -m idjax.data.prepare --embedder WORKDIR` must group the folder's 12
tracks into its 3 people.
"""

import json

import ml_collections
import pytest

from idjax.data.prepare import run, synthetic
from idjax.data.prepare.__main__ import main as prepare_main
from idjax.face import train as face_train
from idjax.face.frozen import save_face_encoder


def _config():
  return ml_collections.ConfigDict(
      dict(
          kind="face_encoder",
          architecture="resnet",
          seed=0,
          input_size=16,
          width=8,
          num_stages=2,
          stem_stride=2,
          blocks_per_stage=1,
          groups=4,
          embed_dim=16,
          context=1.25,
          box_jitter=0.05,
          steps=60,
          batch_size=32,
          lr=3e-3,
          warmup_steps=5,
          weight_decay=5e-4,
          margin=0.3,
          scale=16.0,
          log_every=20,
          num_train_identities=3,
          identity_start=0,
          resolutions=(32,),
          clips_per_identity=4,
          frames_per_clip=4,
          references_per_clip=2,
          render_seed=99,
      )
  )


@pytest.mark.slow
def test_a_tiny_trained_encoder_clusters_the_synthetic_videos(tmp_path):
  videos = tmp_path / "videos"
  synthetic.make_folder(
      str(videos), videos=6, identities=3, shots=2, shot_frames=20, resolution=32, min_side=64
  )
  config = _config()
  images, labels = face_train.build_training_set(config)
  params, _ = face_train.fit(config, images, labels, str(tmp_path / "train"), progress=False)
  save_face_encoder(str(tmp_path / "face"), config, params)
  code = prepare_main(
      [
          "--videos",
          str(videos),
          "--out",
          str(tmp_path / "out"),
          "--boxes",
          str(videos / "boxes.jsonl"),
          "--embedder",
          str(tmp_path / "face"),
          "--resolution",
          "32",
          "--num-frames",
          "8",
          "--no-progress",
      ]
  )
  assert code == 0
  report = json.loads((tmp_path / "out" / run.REPORT).read_text())
  clustering = report["clustering"]
  assert clustering["purity"] == 1.0 and clustering["identities"] == 3, clustering
  assert clustering["clusters"] <= 4, clustering
