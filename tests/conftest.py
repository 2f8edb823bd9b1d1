"""Tests run on 8 simulated CPU devices; this must happen before JAX is imported."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Imported after the flags on purpose (E402 is off for this file in pyproject.toml).
import jax
import pytest

import idjax  # noqa: F401  (sets partitionable threefry)


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: end-to-end tests excluded from the default run")


@pytest.fixture(scope="session")
def devices():
  devs = jax.devices()
  assert len(devs) == 8, "tests expect 8 simulated CPU devices"
  return devs
