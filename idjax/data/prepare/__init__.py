"""Real footage -> training shards: `python -m idjax.data.prepare` (docs/real_footage.md).

One job per module: decode (videos -> frames, skip reasons), shots (cuts from
frame-difference statistics), dlib_faces (HOG/CNN detectors, ResNet
embedder), sidecars (boxes.jsonl, captions.jsonl), tracks (linking,
smoothing, filtering), clips (windows, reference candidates), identities
(clustering, purity, split), shards (TFDS ArrayRecord files), run (the two
stages, resume, report). Fixtures: synthetic (world MP4s with cuts, box
sidecar, broken files), astronaut (a real photograph animated, detector
measurement).
"""
