"""maskdepth: foreground mask and depth from a background picture and a scene picture."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("maskdepth")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+src"

__all__ = ["__version__", "load_model"]


def load_model(path=None, device=None, **options):
    """Load a trained model for prediction; None loads the default weights shipped in the package. `options`
    (size, native, threshold, batch_size, bf16) are those of `maskdepth.predict.load_model`."""
    from maskdepth.predict import load_model as _load

    return _load(path, device=device, **options)
