"""`maskdepth serve`: a small web app (Starlette on uvicorn) to try a model on uploads or a webcam.

One Predictor is loaded and shared. Inference runs in a worker thread behind a semaphore, so at most
`concurrency` pairs are in the model at once; up to `queue` more requests wait their turn and any beyond that
are answered 503 at once, so a burst queues instead of exhausting memory. Every bad request (no file, not an
image, a truncated image, too many pixels, mismatched sizes, too large an upload) is a 4xx whose JSON body
`{"error": ...}` is one readable line, the page shows it, and the server goes on serving.
"""

from __future__ import annotations

import asyncio
import base64
import time
from importlib.resources import files
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from maskdepth.codecs import encode_png, to_rgb_uint8
from maskdepth.errors import UserError
from maskdepth.fileio import open_image_bytes
from maskdepth.predict import Predictor
from maskdepth.prediction_files import encode_prediction
from maskdepth.viz import TURBO_LUT

MAX_UPLOAD_BYTES = 25 * 2**20  # a whole request: two camera frames as PNG fit many times over
MAX_PIXELS = 4096 * 4096  # per picture; the model runs at its working size, but decoding and outputs do not
CONCURRENCY = 1  # pairs in the model at once: one already uses every core
QUEUE = 32  # requests that may wait for the model; more are refused with 503
PAGE = "web/serve.html"
STYLE = "web/page.css"


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


def scale_bar(width: int = 256, height: int = 12) -> np.ndarray:
    """The depth colours from near (left) to far (right), as `colorize_depth` assigns them."""
    return np.repeat(TURBO_LUT[::-1][None], height, axis=0)[:, np.linspace(0, 255, width).astype(int)]


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class App:
    """The routes and the shared state behind them: the predictor, the semaphore and the queue count."""

    def __init__(self, predictor: Predictor, max_upload_bytes: int = MAX_UPLOAD_BYTES,
                 max_pixels: int = MAX_PIXELS, concurrency: int = CONCURRENCY, queue: int = QUEUE):
        self.predictor = predictor
        self.max_upload_bytes, self.max_pixels, self.queue = max_upload_bytes, max_pixels, queue
        self.semaphore = asyncio.Semaphore(max(1, concurrency))
        self.waiting = 0
        self.served = 0

    async def page(self, request: Request) -> HTMLResponse:
        return HTMLResponse(files("maskdepth").joinpath(PAGE).read_text(encoding="utf-8"))

    async def style(self, request: Request) -> Response:
        return Response(files("maskdepth").joinpath(STYLE).read_text(encoding="utf-8"), media_type="text/css")

    async def info(self, request: Request) -> JSONResponse:
        p = self.predictor
        return JSONResponse({"model": p.model_name, "depth_unit": p.depth_unit, "train_size": list(p.train_size),
                             "max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels,
                             "served": self.served, "waiting": self.waiting})

    async def scale_png(self, request: Request) -> Response:
        return Response(encode_png(scale_bar()), media_type="image/png")

    async def predict(self, request: Request) -> JSONResponse:
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return error(411, "the upload has no Content-Length; send the pictures as a multipart form")
        if int(length) > self.max_upload_bytes:
            return error(413, f"the upload is {int(length) / 2**20:.1f} MiB, more than the "
                              f"{self.max_upload_bytes / 2**20:.0f} MiB limit; send smaller pictures")
        try:
            form = await request.form(max_files=2, max_fields=8, max_part_size=self.max_upload_bytes)
        except HTTPException as e:  # malformed multipart body
            return error(400, f"the upload is not a readable multipart form ({e.detail})")
        try:
            pictures = {}
            for field in ("bg", "image"):
                part = form.get(field)
                if not isinstance(part, UploadFile):
                    what = "the empty scene" if field == "bg" else "the scene with something in it"
                    return error(400, f"field '{field}' is missing: send {what} as a file in field '{field}'")
                name = f"{field} ({part.filename})" if part.filename else field
                pictures[field] = (name, await part.read())
            resize_bg = str(form.get("resize_bg", "")).lower() in ("1", "true", "on", "yes")
        finally:
            await form.close()
        if self.waiting >= self.queue:
            return error(503, f"busy: {self.waiting} requests are already waiting; try again in a moment")
        self.waiting += 1
        try:
            await self.semaphore.acquire()
        finally:  # also when the client goes away while waiting
            self.waiting -= 1
        try:
            result = await run_in_threadpool(self._run, pictures, resize_bg)
        except UserError as e:
            return error(400, str(e))
        finally:
            self.semaphore.release()
        self.served += 1
        return JSONResponse(result)

    def _run(self, pictures: dict[str, tuple[str, bytes]], resize_bg: bool) -> dict[str, Any]:
        """Decode, predict and encode one pair (in a worker thread)."""
        (bg_name, bg_data), (image_name, image_data) = pictures["bg"], pictures["image"]
        bg = to_rgb_uint8(open_image_bytes(bg_data, bg_name, self.max_pixels))
        image = to_rgb_uint8(open_image_bytes(image_data, image_name, self.max_pixels))
        start = time.perf_counter()
        pred = self.predictor.predict_arrays([bg], [image], resize_bg, names=[image_name],
                                             layers=self.predictor.camera is not None)[0]
        model_ms = 1000 * (time.perf_counter() - start)
        depth = self.predictor.depth
        pictures = encode_prediction(pred, image, depth)  # the very files `maskdepth predict` writes
        return {
            "width": image.shape[1], "height": image.shape[0], "work_size": list(pred.work_size),
            "coverage": float(pred.mask.mean()), "depth_min": float(pred.depth.min()),
            "depth_max": float(pred.depth.max()), "depth_unit": depth.unit, "model_ms": round(model_ms, 2),
            "mask": _data_url(pictures["mask.png"]), "mask_prob": _data_url(pictures["mask_prob.png"]),
            "overlay": _data_url(pictures["overlay.png"]), "depth_color": _data_url(pictures["depth_color.png"]),
            "depth": _data_url(pictures["depth.png"]),  # 16-bit: depth = value * depth_scale
            "depth_scale": depth.scale,
        }


def create_app(predictor: Predictor, **options: Any) -> Starlette:
    """The ASGI app; `options` go to App (max_upload_bytes, max_pixels, concurrency, queue)."""
    app = App(predictor, **options)

    async def not_found(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, f"{request.url.path}: {exc.detail}")

    routes = [Route("/", app.page), Route("/page.css", app.style), Route("/api/info", app.info),
              Route("/api/scale.png", app.scale_png), Route("/api/predict", app.predict, methods=["POST"])]
    starlette = Starlette(routes=routes, exception_handlers={HTTPException: not_found})
    starlette.state.app = app
    return starlette
