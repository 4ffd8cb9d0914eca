"""fastnst: Johnson et al. (2016) perceptual-loss style transfer and super-resolution in JAX/Flax."""

from fastnst.errors import FastnstError, ImageError, WeightsError

__all__ = ["FastnstError", "ImageError", "WeightsError"]
__version__ = "0.1.0"
