"""The video autoencoder: causal convolutional model, frozen encode/decode protocol.

The trainer (`idjax.autoencoder.train`) is not imported here: users of the
frozen model need neither the world renderer nor the evaluation code.
"""

from idjax.autoencoder.frozen import FrozenAutoencoder, save_autoencoder
from idjax.autoencoder.model import Autoencoder, autoencoder_from_config
