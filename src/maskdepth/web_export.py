"""`maskdepth export --web DIR`: a static folder that runs the model in the browser on a webcam, offline.

The folder holds index.html, model.onnx (exported and parity-checked by export.py) and onnxruntime-web, copied
from the npm package that the project's setup installs into web/node_modules (nothing is fetched from a CDN).
A page opened from disk (file://) may neither fetch nor import modules, so everything the page needs arrives as
classic scripts: the runtime's ES-module bundle rewritten into one (ort.js), and the WebAssembly binary and the
model as base64 (ort-wasm.js, model.js). The bundle runs on WebGPU where the browser has it and on WebAssembly
otherwise.
"""

from __future__ import annotations

import base64
import json
import os
import re
from importlib.resources import files
from pathlib import Path

from maskdepth import align
from maskdepth.errors import UserError
from maskdepth.export import export_onnx
from maskdepth.fileio import OutputKind, atomic_write_text, prepare_output_dir
from maskdepth.predict import SIDE_MULTIPLE, Predictor
from maskdepth.viz import TURBO_LUT

# The npm package's files, from the checkout's web/ folder unless MASKDEPTH_ORT_WEB points elsewhere.
ORT_PACKAGE = "onnxruntime-web"
ORT_BUNDLE = "ort.webgpu.bundle.min.mjs"  # WebGPU and WebAssembly execution providers, glue code inside
ORT_WASM = "ort-wasm-simd-threaded.asyncify.wasm"  # the binary that bundle loads
MARKER = ".maskdepth-web"
WEB_OUTPUT = OutputKind("web folder", markers=(MARKER,), owned=(MARKER, "index.html", "page.css", "config.js", "ort.js",
                                                                "ort-wasm.js", "model.js", "model.onnx"))
PAGE = "web/camera.html"
STYLE = "web/page.css"


def ort_dist_dir() -> Path:
    """onnxruntime-web's dist/ folder; a one-line error when the setup did not install it."""
    env = os.environ.get("MASKDEPTH_ORT_WEB")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "web" / "node_modules" / ORT_PACKAGE
    dist = root / "dist"
    missing = [name for name in (ORT_BUNDLE, ORT_WASM) if not (dist / name).is_file()]
    if missing:
        raise UserError(f"{dist / missing[0]}: onnxruntime-web is not installed; run `make setup` (which runs npm "
                        "ci in web/), or point MASKDEPTH_ORT_WEB at an installed onnxruntime-web package")
    return dist


def classic_script(bundle: str) -> str:
    """The ES-module bundle as a classic script that sets `window.ort`: `import.meta.url` becomes this script's
    own URL and the final `export{...}` an object."""
    m = re.search(r"export\{([^}]*)\};?\s*(//# sourceMappingURL=\S+\s*)?$", bundle)
    if not m or "import.meta.url" not in bundle:
        raise UserError(f"{ORT_BUNDLE}: not the onnxruntime-web bundle this export knows (no final export list); "
                        "install the version pinned in web/package.json")
    names = []
    for item in m.group(1).split(","):
        local, _, exported = item.strip().partition(" as ")
        names.append(f"{json.dumps(exported or local)}:{local}")
    body = bundle[: m.start()].replace("import.meta.url", "__maskdepthScriptUrl")
    return ("(function(){\"use strict\";\nvar __maskdepthScriptUrl=(document.currentScript&&document.currentScript"
            f".src)||location.href;\n{body}\nwindow.ort={{{','.join(names)}}};\n}})();\n")


def _b64_script(var: str, data: bytes) -> str:
    return f"window.{var}=\"{base64.b64encode(data).decode('ascii')}\";\n"


def export_web(predictor: Predictor, out: str | os.PathLike, force: bool = False) -> dict:
    """Write the static folder into `out` (refusing a folder that is not empty and not ours unless `force`)."""
    dist = ort_dist_dir()
    out = prepare_output_dir(out, WEB_OUTPUT, force=force)
    model = predictor.model.to("cpu").float()
    report = export_onnx(model, out / "model.onnx", predictor.header, check=True)
    config = {"model": predictor.model_name, "depth_unit": predictor.depth_unit,
              "train_size": list(predictor.train_size), "side_multiple": SIDE_MULTIPLE,
              "turbo": TURBO_LUT.reshape(-1).tolist(), "light": align.light_settings()}
    atomic_write_text(out / "config.js", f"window.MASKDEPTH_CONFIG={json.dumps(config)};\n")
    atomic_write_text(out / "ort.js", classic_script((dist / ORT_BUNDLE).read_text(encoding="utf-8")))
    atomic_write_text(out / "ort-wasm.js", _b64_script("MASKDEPTH_ORT_WASM", (dist / ORT_WASM).read_bytes()))
    atomic_write_text(out / "model.js", _b64_script("MASKDEPTH_MODEL", (out / "model.onnx").read_bytes()))
    for name, source in (("index.html", PAGE), ("page.css", STYLE)):
        atomic_write_text(out / name, files("maskdepth").joinpath(source).read_text(encoding="utf-8"))
    atomic_write_text(out / MARKER, "written by maskdepth export --web\n")
    for p in out.iterdir():  # readable by a web server too, should the folder be served rather than opened
        p.chmod(0o644)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return {"folder": str(out), "bytes": size, "parity": report}
