"""Writes the PyTorch reference fixture for tests/test_iresnet_parity.py.

Run with the separate torch venv (torch is never an idjax dependency):

  /work/torch-venv/bin/python scripts/parity/iresnet.py

The model below restates insightface's `recognition/arcface_torch/backbones/iresnet.py`
(same module names, so the same state-dict keys) with the stage widths and the
embedding size as arguments, so a tiny IResNet-18 fits a fixture of well under 1 MB;
its fp16 autocast and unused groups/dilation options are left out.
Every BatchNorm's running statistics and affine and every PReLU slope are randomised,
so the test exercises the converter's folding, not identity BatchNorms. The forward
pass runs in float64: the saved references carry no float32 error of their own.

Writes, under tests/fixtures/iresnet/:
  tiny_iresnet.safetensors  the state dict (float32, with num_batches_tracked).
  tiny_iresnet_io.npz       images uint8 [N, 112, 112, 3]; the model's input is
                            images / 127.5 - 1 in float32. References, float32 and
                            channels last: layer2 [N, 28, 28, W2], feature_map
                            (after bn2) [N, 7, 7, W4], embedding (the `features`
                            output, before any normalisation) [N, D].
"""

import argparse
import os

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

LAYERS = (2, 2, 2, 2)  # IResNet-18
WIDTHS = (8, 16, 16, 32)
EMBED_DIM = 16
INPUT_SIZE = 112  # fc expects 7 x 7 cells: 112 / 2**4
NUM_IMAGES = 3
SEED = 0
OUT_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "iresnet")


def conv3x3(in_planes, out_planes, stride=1):
  return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
  return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class IBasicBlock(nn.Module):
  """bn1 -> conv1 3x3 -> bn2 -> prelu -> conv2 3x3 (stride) -> bn3, plus the shortcut."""

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
    self.conv1 = conv3x3(inplanes, planes)
    self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
    self.prelu = nn.PReLU(planes)
    self.conv2 = conv3x3(planes, planes, stride)
    self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
    self.downsample = downsample

  def forward(self, x):
    out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
    identity = x if self.downsample is None else self.downsample(x)
    return out + identity


class IResNet(nn.Module):
  fc_scale = 7 * 7

  def __init__(self, layers, widths, num_features, dropout=0.0):
    super().__init__()
    self.inplanes = widths[0]
    self.conv1 = nn.Conv2d(3, self.inplanes, 3, stride=1, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(self.inplanes, eps=1e-05)
    self.prelu = nn.PReLU(self.inplanes)
    self.layer1 = self._make_layer(widths[0], layers[0], stride=2)
    self.layer2 = self._make_layer(widths[1], layers[1], stride=2)
    self.layer3 = self._make_layer(widths[2], layers[2], stride=2)
    self.layer4 = self._make_layer(widths[3], layers[3], stride=2)
    self.bn2 = nn.BatchNorm2d(widths[3], eps=1e-05)
    self.dropout = nn.Dropout(p=dropout, inplace=True)
    self.fc = nn.Linear(widths[3] * self.fc_scale, num_features)
    self.features = nn.BatchNorm1d(num_features, eps=1e-05)

  def _make_layer(self, planes, blocks, stride):
    downsample = None
    if stride != 1 or self.inplanes != planes:
      downsample = nn.Sequential(
          conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes, eps=1e-05)
      )
    layers = [IBasicBlock(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes
    layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    """x [N, 3, 112, 112] -> (embedding [N, D], {name: intermediate, NCHW})."""
    x = self.prelu(self.bn1(self.conv1(x)))
    x = self.layer1(x)
    x = self.layer2(x)
    seen = {"layer2": x}
    x = self.layer4(self.layer3(x))
    x = self.bn2(x)
    seen["feature_map"] = x
    x = torch.flatten(x, 1)  # (c h w) order: the Flax model must match it
    x = self.dropout(x)
    x = self.fc(x)
    x = self.features(x)
    return x, seen


def randomise_norms(model, calibration, generator):
  """Non-trivial inference statistics for every BatchNorm, slopes for every PReLU.

  The running statistics are first measured on `calibration` (as training would
  leave them), then perturbed, and the affines drawn at random: activations keep
  a sensible scale and the embedding depends on the image, not mostly on biases.
  """
  uniform = lambda n, lo, hi: lo + (hi - lo) * torch.rand(n, generator=generator)
  normal = lambda n, std: std * torch.randn(n, generator=generator)
  norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.PReLU):
        module.weight.copy_(uniform(module.num_parameters, -0.2, 0.6))
    for module in norms:
      module.reset_running_stats()
      module.momentum = None  # a cumulative average: one batch sets the statistics
    model.train()
    model(calibration)
    model.eval()
    for module in norms:
      n = module.num_features
      module.momentum = 0.1
      module.weight.copy_(uniform(n, 0.5, 1.5))
      module.bias.copy_(normal(n, 0.2))
      module.running_mean.add_(normal(n, 0.2) * module.running_var.sqrt())
      module.running_var.mul_(uniform(n, 0.6, 1.6))
      module.num_batches_tracked.fill_(1000)


def random_images(rng, count):
  """uint8 [count, 112, 112, 3]: coarse colour blobs plus pixel noise."""
  coarse = np.repeat(np.repeat(rng.uniform(0, 255, (count, 8, 8, 3)), 14, 1), 14, 2)
  noisy = coarse + rng.normal(0, 20, coarse.shape)
  return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def to_input(images):
  """uint8 NHWC -> the model's float NCHW input in [-1, 1], as the Flax test makes it."""
  crops = images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
  return torch.from_numpy(crops).permute(0, 3, 1, 2)


def channels_last(x):
  return x.permute(0, 2, 3, 1).contiguous().float().numpy()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out_dir", default=OUT_DIR)
  args = parser.parse_args()
  torch.manual_seed(SEED)
  rng = np.random.default_rng(SEED)
  model = IResNet(LAYERS, WIDTHS, EMBED_DIM)
  calibration = to_input(random_images(rng, 32))
  randomise_norms(model, calibration, torch.Generator().manual_seed(SEED))

  images = random_images(rng, NUM_IMAGES)
  with torch.no_grad():
    embedding, seen = model.double()(to_input(images).double())
  model.float()
  state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}

  os.makedirs(args.out_dir, exist_ok=True)
  save_file(state, os.path.join(args.out_dir, "tiny_iresnet.safetensors"))
  np.savez_compressed(
      os.path.join(args.out_dir, "tiny_iresnet_io.npz"),
      images=images,
      layer2=channels_last(seen["layer2"]),
      feature_map=channels_last(seen["feature_map"]),
      embedding=embedding.float().numpy(),
  )
  for name in sorted(os.listdir(args.out_dir)):
    size = os.path.getsize(os.path.join(args.out_dir, name))
    print(f"{name}: {size} bytes")
  print("embedding[0, :4]:", embedding[0, :4].tolist())


if __name__ == "__main__":
  main()
