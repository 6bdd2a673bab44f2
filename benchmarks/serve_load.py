"""Load test of `maskdepth serve` on loopback: N concurrent clients for T seconds per picture size.

    python benchmarks/serve_load.py                      # 8 clients, 20 s each at 192x192 and 640x480
    python benchmarks/serve_load.py --quick              # 2 clients, 3 s at 64x64

Starts the server itself on 127.0.0.1 (a free port), sends only there, and stops it at the end. Every client loop
is bounded in time (--seconds) and in count (--max-requests per client), so the test ends by itself. Reports
latency p50 / p99, throughput and error count per size. Writes benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import io
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
HOST = "127.0.0.1"  # loopback only


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def pair_body(h: int, w: int) -> tuple[bytes, str]:
    """A multipart body with a real-looking (bg, image) pair as PNGs, and its content type."""
    from PIL import Image

    from maskdepth.export import scene_pair

    bg, image = scene_pair(1, h, w, seed=0)
    parts = []
    boundary = uuid.uuid4().hex
    for name, a in (("bg", bg[0]), ("image", image[0])):
        buf = io.BytesIO()
        Image.fromarray((np.transpose(a, (1, 2, 0)) * 255 + 0.5).astype(np.uint8)).save(buf, format="PNG")
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + buf.getvalue() + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def client(port: int, body: bytes, ctype: str, until: float, max_requests: int, out: list) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    for _ in range(max_requests):
        if time.perf_counter() >= until:
            break
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/api/predict", body, {"Content-Type": ctype})
            r = conn.getresponse()
            r.read()
            out.append((time.perf_counter() - t0, r.status))
        except (OSError, http.client.HTTPException):
            out.append((time.perf_counter() - t0, 0))
            conn.close()
            conn = http.client.HTTPConnection(HOST, port, timeout=120)
    conn.close()


def load(port: int, h: int, w: int, clients: int, seconds: float, max_requests: int) -> dict:
    body, ctype = pair_body(h, w)
    results: list[list] = [[] for _ in range(clients)]
    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(port, body, ctype, start + seconds, max_requests, r))
               for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    done = [x for r in results for x in r]
    lat = np.array([d for d, s in done if s == 200]) * 1000
    return {"size": [h, w], "clients": clients, "seconds": round(elapsed, 2), "requests": len(done),
            "ok": int(len(lat)), "errors": sum(1 for _, s in done if s != 200),
            "statuses": sorted({s for _, s in done}),
            "throughput_per_s": round(len(lat) / elapsed, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
            "max_ms": round(float(lat.max()), 1) if len(lat) else None,
            "upload_kib": round(len(body) / 1024, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0, help="load per size (default: %(default)s)")
    p.add_argument("--max-requests", type=int, default=500, help="per client and size (default: %(default)s)")
    p.add_argument("--sizes", nargs="+", default=["192x192", "640x480"], metavar="WxH")
    p.add_argument("--quick", action="store_true", help="2 clients, 3 s, 64x64")
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/serve_load[-quick].json)")
    args = p.parse_args()
    if args.quick:
        args.clients, args.seconds, args.sizes = 2, 3.0, ["64x64"]

    port = free_port()
    log = tempfile.TemporaryFile()  # a file, not a pipe: a chatty server never blocks on a full pipe
    server = subprocess.Popen([sys.executable, "-m", "maskdepth", "serve", "--host", HOST, "--port", str(port),
                               "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.perf_counter() + 120
        while True:  # wait for the model to load and the port to answer
            try:
                c = http.client.HTTPConnection(HOST, port, timeout=5)
                c.request("GET", "/api/info")
                info = json.loads(c.getresponse().read())
                c.close()
                break
            except OSError:
                if server.poll() is not None or time.perf_counter() > deadline:
                    log.seek(0)
                    raise SystemExit(f"server did not start: {log.read().decode(errors='replace')}") from None
                time.sleep(0.5)
        runs = []
        for size in args.sizes:
            w, h = map(int, size.split("x"))
            load(port, h, w, 1, 1.0, 3)  # warm-up: first calls allocate
            r = load(port, h, w, args.clients, args.seconds, args.max_requests)
            runs.append(r)
            print(f"{w}x{h}, {args.clients} clients, {r['seconds']} s: {r['ok']} ok, {r['errors']} errors, "
                  f"{r['throughput_per_s']} req/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    import torch

    report = {"benchmark": "serve load (loopback)", "host": HOST, "model": info["model"],
              "train_size": info["train_size"], "torch": torch.__version__, "runs": runs,
              "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    out = Path(args.out) if args.out else RESULTS / f"serve_load{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
