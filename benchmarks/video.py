"""`maskdepth predict --video` speed and memory: frames per second and peak RSS for a short and a 3x longer clip.

    python benchmarks/video.py            # 10 s and 30 s clips, 640x480 at 25 frames/s
    python benchmarks/video.py --quick    # 1 s and 3 s clips at 160x120

The clips are made procedurally with PyAV (write_synthetic_clip). Each prediction runs in its own process, whose
peak RSS is read from the kernel when it exits (os.wait4), so the figures are those of the command a user runs.
Frames are streamed, so peak RSS should not grow with the clip's length (target: within 10%).
Writes benchmarks/results/video.json (video-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def run_one(bg: Path, clip: Path, out: Path, device: str) -> dict:
    cmd = [sys.executable, "-m", "maskdepth", "predict", "--bg", str(bg), "--video", str(clip), "--out", str(out),
           "--device", device]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read().decode(errors="replace")
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr}")
    info = json.loads((out / "video.json").read_text())
    return {"frames": info["frames"], "seconds_processing": info["seconds"],
            "fps": round(info["frames"] / info["seconds"], 2), "wall_s": round(wall, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}  # ru_maxrss is in KiB on Linux


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", nargs="+", type=float, default=None, help="clip lengths (default: 10 30)")
    p.add_argument("--size", default=None, help="WxH (default: 640x480)")
    p.add_argument("--rate", type=int, default=25, help="frames per second of the clips (default: %(default)s)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="1 s and 3 s clips at 160x120")
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/video[-quick].json)")
    args = p.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from maskdepth.video import write_synthetic_clip

    seconds = args.seconds or ([1, 3] if args.quick else [10, 30])
    w, h = map(int, (args.size or ("160x120" if args.quick else "640x480")).split("x"))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i, s in enumerate(seconds):
            frames = int(round(s * args.rate))
            clip = tmp / f"clip-{s:g}s.mp4"
            bg = write_synthetic_clip(clip, frames, h, w, rate=args.rate)
            Image.fromarray(np.asarray(bg)).save(tmp / "bg.png")
            r = {"clip_seconds": s, "clip_mib": round(clip.stat().st_size / 2**20, 2),
                 **run_one(tmp / "bg.png", clip, tmp / f"out-{i}", args.device)}
            runs.append(r)
            print(f"{s:g} s clip ({r['frames']} frames {w}x{h}): {r['fps']} frames/s, peak RSS {r['peak_rss_mib']} MiB",
                  flush=True)
    rss = [r["peak_rss_mib"] for r in runs]
    report = {
        "benchmark": "predict --video", "size": [h, w], "rate": args.rate, "device": args.device,
        "torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "runs": runs,
        "rss_spread": round(max(rss) / min(rss) - 1, 4),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    out = Path(args.out) if args.out else RESULTS / f"video{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"peak RSS spread {100 * report['rss_spread']:.1f}%; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
