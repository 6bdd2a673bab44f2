"""Asset generation speed: procedural rooms (render with depth and floor) and cutouts per second, one process.
Writes benchmarks/results/assets.json (assets-quick.json with --quick).

    python benchmarks/assets.py            # rooms and cutouts at 192 and 512 px
    python benchmarks/assets.py --quick    # tiny smoke run

Targets: a 192x192 room well under 50 ms on one core, 512x512 within about a second.
Each item is a fresh draw (sample_room + render_room, or procedural_cutout) from its own seed, as `data make` does.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _time_items(make, count: int) -> dict:
    """Wall and CPU time per item (CPU time is the steadier figure on a shared machine)."""
    make(10_000)  # warm up (imports, first allocations)
    wall, cpu = [], []
    for i in range(count):
        t0, c0 = time.perf_counter(), time.process_time()
        make(i)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    ms, cpu_ms = np.array(wall) * 1e3, np.array(cpu) * 1e3
    return {"count": count,
            "ms": {"median": round(float(np.median(ms)), 2), "p90": round(float(np.percentile(ms, 90)), 2),
                   "min": round(float(ms.min()), 2)},
            "cpu_ms": {"median": round(float(np.median(cpu_ms)), 2)},
            "per_s": round(float(count / ms.sum() * 1e3), 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[192, 512], help="square sizes in px (default: 192 512)")
    p.add_argument("--count", type=int, default=50, help="items per measurement (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (64 and 96 px, 3 items)")
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/assets[-quick].json)")
    args = p.parse_args()

    from maskdepth.data.cutouts import procedural_cutout
    from maskdepth.data.rooms import render_room, sample_room
    from maskdepth.fileio import atomic_write_text

    sizes, count = ([64, 96], 3) if args.quick else (args.sizes, args.count)
    results = []
    for size in sizes:
        def room(i, size=size):
            render_room(sample_room(np.random.default_rng(i)), (size, size))

        def cutout(i, size=size):
            procedural_cutout(np.random.default_rng(i), size)

        for what, make in (("room", room), ("cutout", cutout)):
            r = {"what": what, "size": size, **_time_items(make, count)}
            results.append(r)
            print(f"{what:7s} {size:4d} px: median {r['ms']['median']:7.1f} ms  p90 {r['ms']['p90']:7.1f} ms  "
                  f"cpu {r['cpu_ms']['median']:7.1f} ms  {r['per_s']:7.1f} /s")

    report = {
        "results": results,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    out = Path(args.out) if args.out else RESULTS / f"assets{'-quick' if args.quick else ''}.json"
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
