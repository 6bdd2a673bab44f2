"""maskdepth: foreground mask and depth from a background picture and a scene picture."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("maskdepth")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+src"

__all__ = ["__version__", "calibrate", "load_model"]


def load_model(path=None, device=None, **options):
    """Load a trained model for prediction; None loads the default weights shipped in the package. `options`
    (size, native, threshold, batch_size, bf16, camera) are those of `maskdepth.predict.load_model`; `camera` (a
    camera.json from `maskdepth calibrate`) makes depth metric with the profile's scale."""
    from maskdepth.predict import load_model as _load

    return _load(path, device=device, **options)


def calibrate(bg, camera_height=None, distances=None, fov=None, focal_px=None, ckpt=None, out=None, force=False,
              tilt=None):
    """Camera profile of a fixed camera from its empty scene and its height in metres (with its downward tilt
    in degrees, if measured) or known distances ('X,Y=M': pixel X,Y is M metres away along the ray); see
    maskdepth.calibration.calibrate."""
    from maskdepth.calibration import calibrate as _calibrate

    return _calibrate(bg, camera_height=camera_height, distances=distances, fov=fov, focal_px=focal_px, ckpt=ckpt,
                      out=out, force=force, tilt=tilt)
