"""The camera profile (camera.json): what is known once about a fixed camera, for one model.

A profile holds the image size, the pinhole intrinsics (focal length in pixels, principal point at the image
centre), the metric scale of the model's depth (metres per model depth unit, and a shift in metres where the
calibration could fit one), the floor plane in camera coordinates (metres), the fingerprint of the model it was
fitted with, and the fit's residuals. `maskdepth calibrate` (calibrate.py) makes one; `predict --camera` uses
it. A profile for another model or another image size is refused: the scale belongs to one model's depth on one
view.

Camera coordinates: x right, y down, z forward (along the optical axis); pixel (row r, col c) has its centre at
(c + 0.5, r + 0.5) and looks along (a, b, 1) with a = (c + 0.5 - cx) / f, b = (r + 0.5 - cy) / f. Depth is
z-depth, as everywhere in maskdepth. The floor is the plane n . X + height = 0 with n the unit normal pointing up
(towards the camera) and height the camera's distance to it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskdepth.errors import UserError
from maskdepth.fileio import atomic_write_text, require_file

PROFILE_FORMAT = "maskdepth-camera"
PROFILE_VERSION = 2  # 2: depth.shift (version 1 profiles read with shift 0)
# A pinhole field of view outside this is not a camera calibrate can model (fisheye or a telescope).
FOV_RANGE_DEG = (10.0, 170.0)
# When neither --fov nor --focal-px is given: the nominal camera of the procedural data (banks.NOMINAL_VFOV_DEG).
DEFAULT_VFOV_DEG = 60.0
# A negative shift never brings a pixel nearer than this to the lens (metres).
MIN_METRIC_DEPTH_M = 0.01


@dataclass(frozen=True)
class CameraProfile:
    """See the module docstring. `size` is (H, W); `floor_normal` is unit, camera coordinates, pointing up."""

    size: tuple[int, int]
    focal_px: float
    depth_scale: float  # metres per unit of the model's depth output
    floor_normal: tuple[float, float, float]
    camera_height_m: float  # the camera's distance to the floor plane
    model: str  # the model's name, for messages
    model_fingerprint: str  # model_fingerprint() of the model the profile was fitted with
    depth_shift: float = 0.0  # metres added after the scale
    residuals: dict[str, Any] = field(default_factory=dict)  # how well the fit went (calibrate.py says what)
    source: dict[str, Any] = field(default_factory=dict)  # what it was made from: bg file, measurements

    @property
    def principal_point(self) -> tuple[float, float]:
        """(cx, cy) in pixels: the image centre."""
        return self.size[1] / 2, self.size[0] / 2

    def metric(self, depth: np.ndarray) -> np.ndarray:
        """The model's depth (its unit) in metres: depth * scale + shift, never nearer than MIN_METRIC_DEPTH_M."""
        out = depth.astype(np.float32) * np.float32(self.depth_scale) + np.float32(self.depth_shift)
        return np.maximum(out, np.float32(MIN_METRIC_DEPTH_M))

    @property
    def vfov_deg(self) -> float:
        return math.degrees(2 * math.atan(self.size[0] / 2 / self.focal_px))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        h, w = self.size
        cx, cy = self.principal_point
        return {"format": PROFILE_FORMAT, "version": PROFILE_VERSION,
                "image": {"width": w, "height": h},
                "intrinsics": {"model": "pinhole", "focal_px": self.focal_px, "cx": cx, "cy": cy,
                               "vfov_deg": round(self.vfov_deg, 4)},
                "depth": {"unit": "metres", "scale": self.depth_scale, "shift": self.depth_shift, "kind": "z-depth",
                          "meaning": "metric depth = model depth * scale + shift"},
                "floor": {"normal": list(self.floor_normal), "camera_height_m": self.camera_height_m,
                          "meaning": "camera coordinates (x right, y down, z forward, metres): "
                                     "normal . X + camera_height_m = 0"},
                "model": {"name": self.model, "fingerprint": self.model_fingerprint},
                "residuals": d["residuals"], "source": d["source"]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CameraProfile:
        """Raises KeyError, TypeError or ValueError on a malformed dict (load_profile turns them into one line)."""
        if d.get("format") != PROFILE_FORMAT:
            raise ValueError("not a maskdepth camera profile")
        if int(d["version"]) > PROFILE_VERSION:
            raise ValueError(f"profile version {d['version']} is newer than this maskdepth reads")
        normal = tuple(float(x) for x in d["floor"]["normal"])
        profile = cls(size=(int(d["image"]["height"]), int(d["image"]["width"])),
                      focal_px=float(d["intrinsics"]["focal_px"]), depth_scale=float(d["depth"]["scale"]),
                      depth_shift=float(d["depth"].get("shift", 0.0)), floor_normal=normal,
                      camera_height_m=float(d["floor"]["camera_height_m"]),
                      model=str(d["model"]["name"]), model_fingerprint=str(d["model"]["fingerprint"]),
                      residuals=dict(d.get("residuals", {})), source=dict(d.get("source", {})))
        good = (len(normal) == 3 and abs(math.hypot(*normal) - 1) < 1e-3 and min(profile.size) >= 1
                and all(math.isfinite(x) and x > 0 for x in (profile.focal_px, profile.depth_scale,
                                                              profile.camera_height_m))
                and math.isfinite(profile.depth_shift))
        if not good:
            raise ValueError("values out of range")
        return profile


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the model's name and weights: the same weights give the same fingerprint whatever file or
    device they came from; any other model another."""
    model = getattr(model, "_orig_mod", model)
    h = hashlib.sha256(str(getattr(model, "model_name", type(model).__name__)).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32 if t.is_floating_point() else t.dtype).contiguous()
                 .numpy().tobytes())
    return "sha256:" + h.hexdigest()


def focal_from(size: tuple[int, int], fov_deg: float | None = None, focal_px: float | None = None) -> float:
    """Focal length in pixels from a vertical field of view (degrees) or a focal length in pixels; neither gives
    the nominal DEFAULT_VFOV_DEG."""
    if fov_deg is not None and focal_px is not None:
        raise UserError("give the field of view (--fov) or the focal length (--focal-px), not both")
    h = size[0]
    if focal_px is not None:
        if not (math.isfinite(focal_px) and focal_px > 0):
            raise UserError(f"--focal-px {focal_px}: must be a positive number of pixels")
        fov_deg = math.degrees(2 * math.atan(h / 2 / focal_px))
        if not FOV_RANGE_DEG[0] <= fov_deg <= FOV_RANGE_DEG[1]:
            raise UserError(f"--focal-px {focal_px}: gives a {fov_deg:.1f} deg vertical field of view on a {h} px "
                            f"high image, outside {FOV_RANGE_DEG[0]:g}-{FOV_RANGE_DEG[1]:g} deg; check the value")
        return float(focal_px)
    fov = DEFAULT_VFOV_DEG if fov_deg is None else fov_deg
    if not (math.isfinite(fov) and FOV_RANGE_DEG[0] <= fov <= FOV_RANGE_DEG[1]):
        raise UserError(f"--fov {fov_deg}: the vertical field of view must be between {FOV_RANGE_DEG[0]:g} and "
                        f"{FOV_RANGE_DEG[1]:g} degrees (a pinhole camera)")
    return (h / 2) / math.tan(math.radians(fov) / 2)


def ray_offsets(size: tuple[int, int], focal: float) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), each (H, W) float64: pixel (r, c) looks along (a, b, 1) in camera coordinates."""
    h, w = size
    a = (np.arange(w, dtype=np.float64) + 0.5 - w / 2) / focal
    b = (np.arange(h, dtype=np.float64) + 0.5 - h / 2) / focal
    return np.broadcast_to(a[None, :], size), np.broadcast_to(b[:, None], size)


def load_profile(path: str | os.PathLike) -> CameraProfile:
    """Read and validate camera.json; anything wrong is one line that says what to do."""
    path = require_file(path, "camera profile")
    try:
        return CameraProfile.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path}: corrupt camera profile (not JSON); make it again with `maskdepth calibrate`") \
            from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{path}: not a valid camera profile ({e}); make it again with `maskdepth calibrate`") \
            from None


def save_profile(profile: CameraProfile, path: str | os.PathLike, force: bool = False) -> None:
    """Write camera.json atomically; an existing file is kept unless `force`."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give the camera profile's file name, e.g. {path / 'camera.json'}")
    if path.exists() and not force:
        raise UserError(f"{path}: already exists; pass --force to replace it, or choose another --out")
    atomic_write_text(path, json.dumps(profile.to_json(), indent=2) + "\n")


def check_profile(profile: CameraProfile, fingerprint: str, where: str = "camera profile") -> None:
    """Refuse a profile fitted with another model."""
    if profile.model_fingerprint != fingerprint:
        raise UserError(f"{where}: made for another model ({profile.model}, {profile.model_fingerprint[:19]}...); "
                        "calibrate again with this model (`maskdepth calibrate --ckpt ...`)")


def check_size(profile: CameraProfile, size: tuple[int, int], what: str = "image") -> None:
    """Refuse a frame whose size is not the profile's."""
    if tuple(size) != tuple(profile.size):
        raise UserError(f"{what}: is {size[1]}x{size[0]} but the camera profile is for {profile.size[1]}x"
                        f"{profile.size[0]}; use frames of the calibrated size, or calibrate at this size")
