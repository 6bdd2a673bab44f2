"""`maskdepth serve`: a pair in, the same mask as `maskdepth predict`; every kind of bad request is a 4xx with a
readable message, and the server goes on serving."""

from __future__ import annotations

import base64
import io
import zlib

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from maskdepth.cli import main
from maskdepth.codecs import decode_depth_png, decode_image
from maskdepth.predict import load_model
from maskdepth.serve import create_app


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt):
    return tiny_ckpt


@pytest.fixture(scope="module")
def client(ckpt):
    app = create_app(load_model(ckpt, "cpu"), max_upload_bytes=200_000, max_pixels=300 * 300)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def pair(h: int = 40, w: int = 56) -> tuple[bytes, bytes]:
    rng = np.random.default_rng(0)
    bg = rng.integers(40, 200, (h, w, 3), dtype=np.uint8)
    image = bg.copy()
    image[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = (230, 40, 40)
    return png(bg), png(image)


def from_data_url(url: str) -> bytes:
    assert url.startswith("data:image/png;base64,")
    return base64.b64decode(url.split(",", 1)[1])


def post(client, **files):
    return client.post("/api/predict", files={k: (f"{k}.png", v, "image/png") for k, v in files.items()})


def test_page_and_prediction_match_predict_command(client, ckpt, tmp_path, capsys):
    page = client.get("/")
    assert page.status_code == 200 and "maskdepth" in page.text and "api/predict" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    assert client.get("/api/info").json()["depth_unit"] == "m"
    assert client.get("/api/scale.png").headers["content-type"] == "image/png"
    assert client.get("/page.css").headers["content-type"].startswith("text/css")
    bg, image = pair()
    r = post(client, bg=bg, image=image)
    assert r.status_code == 200, r.text
    res = r.json()
    (tmp_path / "bg.png").write_bytes(bg)
    (tmp_path / "image.png").write_bytes(image)
    assert main(["predict", "--ckpt", str(ckpt), "--bg", str(tmp_path / "bg.png"), "--image",
                 str(tmp_path / "image.png"), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    want = np.asarray(Image.open(tmp_path / "out" / "mask.png"))
    got = np.asarray(decode_image(from_data_url(res["mask"])))
    assert got.shape == (40, 56) and np.array_equal(got, want)  # the same model on the same pixels
    depth = decode_depth_png(from_data_url(res["depth"])) * res["depth_scale"]
    want_depth = decode_depth_png((tmp_path / "out" / "depth.png").read_bytes()) * 0.001
    assert np.abs(depth - want_depth).max() < 1e-6
    assert res["coverage"] == pytest.approx(float((want / 255.0 >= 0.5).mean()), abs=0.01)
    assert 0 < res["depth_min"] <= res["depth_max"] < 10 and res["model_ms"] > 0
    for key in ("overlay", "depth_color"):
        assert decode_image(from_data_url(res[key])).size == (56, 40)


def test_bad_requests_are_4xx_with_a_message_and_serving_goes_on(client):
    bg, image = pair()
    truncated = image[: len(image) // 2]
    bomb = png(np.zeros((400, 400, 3), np.uint8))  # 160,000 px > the 90,000-px limit of this app
    big = b"\x89PNG" + bytes(300_000)
    small_bg = pair(20, 28)[0]
    cases = [
        (post(client, bg=bg, image=b"hello, not an image"), 400, "image (image.png): cannot read image"),
        (post(client, bg=bg, image=truncated), 400, "image (image.png): cannot read image"),
        (post(client, bg=bg, image=bomb), 400, "larger than the 90,000-pixel limit"),
        (post(client, bg=small_bg, image=image), 400, "image is 56x40 but its bg is 28x20"),
        (post(client, image=image), 400, "field 'bg' is missing"),
        (client.post("/api/predict", data={"bg": "text", "image": "text"}), 400, "field 'bg' is missing"),
        (client.post("/api/predict", content=b"x" * 10, headers={"content-type": "multipart/form-data"}), 400,
         "not a readable multipart form"),
        (post(client, bg=bg, image=big), 413, "more than the 0 MiB limit"),
        (client.get("/api/predict"), 405, "/api/predict"),
        (client.get("/nowhere"), 404, "/nowhere"),
    ]
    for r, status, text in cases:
        assert r.status_code == status, (status, r.text)
        msg = r.json()["error"]
        assert text in msg and "\n" not in msg and "Traceback" not in msg, msg
    assert post(client, bg=bg, image=image).status_code == 200  # still serving
    assert post(client, bg=small_bg, image=image).status_code == 400
    r = client.post("/api/predict", files={"bg": ("bg.png", small_bg), "image": ("image.png", image)},
                    data={"resize_bg": "1"})
    assert r.status_code == 200


def test_requests_beyond_the_queue_are_refused_not_run(ckpt):
    app = create_app(load_model(ckpt, "cpu"), queue=0)
    bg, image = pair()
    with TestClient(app) as c:
        r = post(c, bg=bg, image=image)
        assert r.status_code == 503 and "busy" in r.json()["error"]


def test_a_body_without_length_is_refused(client):
    body = zlib.compress(b"whatever")
    def chunks():
        yield body
    r = client.post("/api/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 411 and "Content-Length" in r.json()["error"]
