"""`maskdepth calibrate`: a camera profile (camera.json) for a fixed camera."""

from __future__ import annotations

import argparse

DESCRIPTION = """Calibrate a fixed camera once from the picture of its empty scene (BG) and one measurement: the
camera's height above the floor (--camera-height, best with its downward --tilt) or one or more known distances
(--distance X,Y=M: the point seen at pixel column X, row Y is M metres from the camera, measured in a straight
line from the lens, i.e. along the ray, not the z-depth). The model's depth of the empty scene is fitted with the
floor plane; the profile holds the image size, the intrinsics (vertical --fov or --focal-px; principal point at
the image centre), the metric scale of the model's depth, the floor plane, the model's fingerprint and the fit's
residuals. Use it with `maskdepth predict --camera camera.json`. Needs a flat floor in view; see
docs/calibration.md."""


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="camera profile (metric depth) from the empty scene and one measurement",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bg", required=True, help="picture of the empty scene, at the size of the frames to predict")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--camera-height", type=float, metavar="M", help="camera's height above the floor, metres")
    what.add_argument("--distance", action="append", metavar="X,Y=M",
                      help="pixel X,Y is M metres from the camera along the ray; repeat for several")
    p.add_argument("--tilt", type=float, metavar="DEG",
                   help="with --camera-height: the camera's measured downward tilt in degrees (0 = level)")
    lens = p.add_mutually_exclusive_group()
    lens.add_argument("--fov", type=float, metavar="DEG", help="vertical field of view in degrees (default: 60)")
    lens.add_argument("--focal-px", type=float, metavar="F", help="focal length in pixels of the bg")
    p.add_argument("--ckpt", default=None, help="model checkpoint, or a file from maskdepth export --onnx (default: "
                        "the weights shipped with maskdepth)")
    p.add_argument("--out", required=True, help="camera profile to write, e.g. camera.json")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from maskdepth.calibration import calibrate, distance_warning, parse_distance

    distances = [parse_distance(d) for d in args.distance or []]
    profile = calibrate(args.bg, camera_height=args.camera_height, distances=distances, fov=args.fov,
                        focal_px=args.focal_px, ckpt=args.ckpt, out=args.out, force=args.force, tilt=args.tilt)
    warning = distance_warning(profile)
    if warning:
        print(f"maskdepth: warning: {warning}", file=sys.stderr)
    r = profile.residuals
    shift = f" {profile.depth_shift:+.3f} m" if profile.depth_shift else ""
    print(f"wrote {args.out}: {profile.size[1]}x{profile.size[0]}, vertical fov {profile.vfov_deg:.1f} deg, "
          f"depth scale {profile.depth_scale:.4g} metres per model unit{shift}, camera {profile.camera_height_m:.3f} "
          f"metres above the floor (floor fit: {r['floor_inlier_fraction']:.0%} of the picture, residual "
          f"{r['floor_rms_relative']:.1%} of the height)")
    return 0
