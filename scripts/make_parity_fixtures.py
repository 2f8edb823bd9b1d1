"""Regenerates every parity fixture under tests/fixtures/ from the reference
implementations (PyTorch, diffusers). Run once, in a separate environment:

  python3 -m venv /tmp/torch-venv
  /tmp/torch-venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch
  /tmp/torch-venv/bin/pip install diffusers safetensors numpy
  /tmp/torch-venv/bin/python scripts/make_parity_fixtures.py

(Made with torch 2.13.0+cpu and diffusers 0.42.1.) torch and diffusers are
never idjax dependencies: the tests read the fixtures with NumPy alone. Each
script under scripts/parity/ writes one fixture and says what it holds:

  iresnet.py   tests/fixtures/iresnet/   a tiny IResNet-18 (insightface layout)
  wan_vae.py   tests/fixtures/wan_vae/   diffusers' AutoencoderKLWan, tiny
  wan_dit.py   tests/fixtures/wan_dit/   diffusers' WanTransformer3DModel, tiny
"""

import os
import subprocess
import sys

SCRIPTS = ("iresnet.py", "wan_vae.py", "wan_dit.py")


def main():
  here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parity")
  for name in SCRIPTS:
    print(f"== {name}", flush=True)
    subprocess.run([sys.executable, os.path.join(here, name)], check=True)


if __name__ == "__main__":
  main()
