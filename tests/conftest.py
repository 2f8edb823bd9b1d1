"""Tests run on 8 simulated CPU devices; this must happen before JAX is imported."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after the flags on purpose)
import pytest  # noqa: E402

import idjax  # noqa: E402,F401  (sets partitionable threefry)


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: end-to-end tests excluded from the default run")


@pytest.fixture(scope="session")
def devices():
  devs = jax.devices()
  assert len(devs) == 8, "tests expect 8 simulated CPU devices"
  return devs
