"""Bad input found by hand: every case is one clear line and a non-zero exit, never a hang, a traceback or a
file lost. Each test holds one hole closed."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from maskdepth.cli import main
from maskdepth.data.make import MakeConfig, make_dataset
from maskdepth.data.shards import count_shard_samples, iter_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from mutate import png_claiming_size, set_tar_field, tar_headers  # noqa: E402

TINY = MakeConfig(size=(32, 32), backgrounds=3, foregrounds=2, per_pair=2, shard_size=4, test_fraction=0.34)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("made") / "data"
    make_dataset(out, TINY, workers=1, progress=False)
    return out


@pytest.fixture
def data(made, tmp_path) -> Path:
    """A fresh copy of the tiny dataset, free to damage."""
    return Path(shutil.copytree(made, tmp_path / "data"))


def one_line_error(capsys, argv: list[str], *words: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("maskdepth: error:") == 1, err
    err = err.strip().splitlines()[-1]  # progress lines may come before it
    assert err.startswith("maskdepth: error:"), err
    for w in words:
        assert w in err, err
    return err


def first_shard(data: Path) -> Path:
    return sorted((data / "shards").glob("train-*.tar"))[0]


# ---------------------------------------------------------------------------------------------------- tar shards


@pytest.mark.parametrize("value", [b"-1000", b"-1", b"-0000001000", b"+100", b"1_0", b"0o17",
                                   b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\0"])
def test_a_negative_or_odd_member_size_is_refused_not_looped_on(data, capsys, value):
    shard = first_shard(data)
    raw = shard.read_bytes()
    shard.write_bytes(set_tar_field(raw, tar_headers(raw)[1], 124, 12, value))
    for argv in (["data", "stats", str(data)], ["data", "show", str(data), "--out", str(data.parent / "g.png")]):
        one_line_error(capsys, argv, str(shard), "size field")


def test_a_huge_member_size_is_refused(data, capsys):
    shard = first_shard(data)
    raw = shard.read_bytes()
    shard.write_bytes(set_tar_field(raw, tar_headers(raw)[0], 124, 12, b"77777777777"))
    one_line_error(capsys, ["data", "stats", str(data)], str(shard), "cut short")


@pytest.mark.parametrize("kind", [b"1", b"2", b"3", b"5", b"x", b"g"])
def test_a_member_of_another_type_is_refused(data, kind):
    shard = first_shard(data)
    raw = shard.read_bytes()
    shard.write_bytes(set_tar_field(raw, tar_headers(raw)[2], 156, 1, kind))
    from maskdepth.errors import UserError

    with pytest.raises(UserError, match="only regular files"):
        list(iter_shard(shard))
    with pytest.raises(UserError, match="only regular files"):
        count_shard_samples(shard)


def test_a_shard_whose_first_block_is_zeroed_is_reported_not_read_as_empty(data, capsys):
    shard = first_shard(data)
    raw = shard.read_bytes()
    shard.write_bytes(bytes(512) + raw[512:])
    one_line_error(capsys, ["data", "stats", str(data)], str(shard), "after the end-of-archive")


def test_a_short_shard_stops_the_loader_instead_of_dropping_samples(data):
    """A shard that parses but holds fewer samples than the metadata says (here: one of another dataset)."""
    from maskdepth.data.loader import make_loader
    from maskdepth.data.shards import write_shard
    from maskdepth.errors import UserError

    shard = first_shard(data)
    samples = list(iter_shard(shard))
    write_shard(shard, samples[:-1])
    with pytest.raises(UserError, match=r"holds \d+ samples, the dataset's metadata says"):
        for _ in make_loader(data, "train", 2, None, train=False, workers=0):
            pass
    with pytest.raises(UserError, match=r"holds \d+ samples, the dataset's metadata says"):
        from maskdepth.data.inspect import show_grid

        show_grid(data, "train", n=100)


def test_a_hang_in_a_loader_worker_is_one_line_too(data, capsys, tmp_path):
    shard = first_shard(data)
    raw = shard.read_bytes()
    shard.write_bytes(set_tar_field(raw, tar_headers(raw)[1], 124, 12, b"-1000"))
    one_line_error(capsys, ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--model",
                            "maskdepth-small", "--size", "32", "--batch-size", "2", "--workers", "1", "--steps", "1",
                            "--set", "train.samples=0", "--set", "data.eval_split="], str(shard))


# ---------------------------------------------------------------------------------------------------- metadata


def _edit_meta(data: Path, change) -> None:
    p = data / "metadata.json"
    meta = json.loads(p.read_text())
    p.write_text(json.dumps(change(meta)))


@pytest.mark.parametrize("change, key", [
    (lambda m: {**m, "format_version": "1"}, "format_version"),
    (lambda m: {k: v for k, v in m.items() if k != "depth"}, "depth is missing"),
    (lambda m: [m], "the top level"),
    (lambda m: {**m, "size": "big"}, "size"),
    (lambda m: {**m, "size": [-32, 32]}, "size[0]"),
    (lambda m: {**m, "size": [200000, 200000]}, "size"),
    (lambda m: {**m, "depth": {**m["depth"], "scale": "far"}}, "depth.scale"),
    (lambda m: {**m, "counts": {**m["counts"], "train": 10 ** 15}}, "counts.train"),
    (lambda m: {**m, "shards": {"train": ["../../etc/passwd"]}}, "shards.train[0]"),
    (lambda m: {**m, "shard_counts": {"train": [10 ** 12] * len(m["shards"]["train"])}}, "shard_counts.train[0]"),
    (lambda m: {**m, "backgrounds": [{"focal_px": "wide"}]}, "backgrounds[0].focal_px"),
])
def test_damaged_metadata_is_one_line_naming_the_key(data, capsys, change, key, tmp_path):
    _edit_meta(data, change)
    for argv in (["data", "stats", str(data)], ["data", "show", str(data), "--out", str(tmp_path / "g.png")]):
        one_line_error(capsys, argv, "metadata.json", key)


def test_a_background_whose_header_claims_a_huge_picture_is_one_line(data, capsys):
    p = data / "backgrounds" / "bg-00000.png"
    p.write_bytes(png_claiming_size(p.read_bytes(), 60000, 60000))  # 3.6 Gpx claimed by the header
    one_line_error(capsys, ["data", "show", str(data), "--out", str(data.parent / "g.png")], "bg-00000.png",
                   "pixel limit")


# ---------------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from maskdepth.checkpoint import save_checkpoint
    from maskdepth.models import create_model

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, create_model("maskdepth-small", width=8, depth_max=16.0),
                    {"train_size": [32, 32], "depth": {"unit": "metres", "scale": 0.001, "max": 16.0}})
    return path


def with_header(src: Path, dst: Path, header) -> Path:
    """A valid safetensors file with the same weights and a crafted maskdepth header."""
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(src)), str(dst), metadata={"maskdepth": json.dumps(header)})
    return dst


def _header(ckpt: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="pt") as f:
        return json.loads(f.metadata()["maskdepth"])


@pytest.mark.parametrize("change, words", [
    (lambda h: [h], "not an object"),
    (lambda h: "text", "not an object"),
    (lambda h: {**h, "format_version": "1"}, "format_version"),
    (lambda h: {**h, "model": ["maskdepth-small"]}, "model"),
    (lambda h: {**h, "model_kwargs": [1, 2]}, "model_kwargs"),
    (lambda h: {**h, "train_size": "abc"}, "train_size"),
    (lambda h: {**h, "depth": {**h["depth"], "max": "far"}}, "depth.max"),
    (lambda h: {**h, "depth": 3}, "depth"),
    (lambda h: {**h, "model_kwargs": {**h["model_kwargs"], "width": 100000}}, "parameters"),
    (lambda h: {**h, "model_kwargs": {**h["model_kwargs"], "depths": [1, 1, 2, 1e308]}}, "beyond"),
    (lambda h: {**h, "model_kwargs": {**h["model_kwargs"], "depths": [1] * 1000}}, "entries"),
    (lambda h: {**h, "model_kwargs": {**h["model_kwargs"], "width": -4}}, "width"),
    (lambda h: {**h, "model_kwargs": {**h["model_kwargs"], "depths": "abc"}}, "model"),
])
def test_a_crafted_checkpoint_header_is_one_line_everywhere(ckpt, made, tmp_path, capsys, change, words):
    bad = with_header(ckpt, tmp_path / "bad.safetensors", change(_header(ckpt)))
    img = made / "backgrounds" / "bg-00000.png"
    for argv in (["predict", "--ckpt", str(bad), "--bg", str(img), "--image", str(img), "--out",
                  str(tmp_path / "p"), "--device", "cpu"],
                 ["evaluate", str(bad), "--data", str(made), "--out", str(tmp_path / "ev"), "--workers", "0"],
                 ["export", str(bad), "--onnx", str(tmp_path / "m.onnx"), "--no-check"]):
        one_line_error(capsys, argv, str(bad), words)


# ---------------------------------------------------------------------------------------------------- --force


def test_force_never_removes_a_commands_own_inputs(made, ckpt, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    shutil.copy(ckpt, run / "last.safetensors")
    one_line_error(capsys, ["evaluate", str(run / "last.safetensors"), "--data", str(made), "--out", str(run),
                            "--force"], "an input of this command lies inside")
    assert (run / "last.safetensors").is_file()
    data = Path(shutil.copytree(made, tmp_path / "here" / "data"))
    one_line_error(capsys, ["train", "--data", str(data), "--out", str(data.parent), "--force", "--steps", "1"],
                   "data")
    one_line_error(capsys, ["evaluate", str(ckpt), "--data", str(data), "--out", str(data), "--force"])
    assert (data / "metadata.json").is_file() and list((data / "shards").glob("*.tar"))
    home = tmp_path / "home"
    (home / "photos").mkdir(parents=True)
    (home / "photos" / "me.jpg").write_text("mine")
    one_line_error(capsys, ["data", "make", str(home), "--force", "--size", "32", "--quiet"], "not a maskdepth")
    assert (home / "photos" / "me.jpg").read_text() == "mine"


def test_plot_and_a_second_evaluate_do_not_overwrite_without_force(made, ckpt, tmp_path, capsys):
    ev = tmp_path / "ev"
    args = ["evaluate", str(ckpt), "--data", str(made), "--out", str(ev), "--workers", "0", "--limit", "2"]
    assert main(args) == 0
    first = (ev / "metrics.json").read_bytes()
    one_line_error(capsys, args, "already holds", "--force")
    assert (ev / "metrics.json").read_bytes() == first
    assert main([*args, "--force"]) == 0
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": {"total": 1.0}}\n')
    (tmp_path / "c.png").write_bytes(b"mine")
    one_line_error(capsys, ["plot", str(run), "--out", str(tmp_path / "c.png")], "already exists")
    assert (tmp_path / "c.png").read_bytes() == b"mine"
    assert main(["plot", str(run), "--out", str(tmp_path / "c.png"), "--force"]) == 0


@pytest.mark.parametrize("line", [b"\xff\xfe not utf-8", b'"a string"', b"true", b"[1, 2]", b'{"step": "x"}',
                                  b'{"step": 2, "loss": "x"}', b'{"step": 3, "metrics": {"iou": "x"}}',
                                  b'{"step": 4, "loss": {"total": true}}'])
def test_plot_passes_over_damaged_metrics_lines(tmp_path, capsys, line):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": {"total": 1.0}}\n' + line + b"\n"
                                        + b'{"step": 5, "loss": {"total": 0.5}}\n')
    assert main(["plot", str(run)]) == 0
    assert (run / "curves.png").is_file()


# ---------------------------------------------------------------------------------------------------- zips


def _seed_zip(path: Path, n: int = 3) -> Path:
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    def png(a) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("bg/bg_1.png", png(np.full((24, 24, 3), 90, np.uint8)))
        for k in range(1, n + 1):
            z.writestr(f"fg_bg/fg_bg_1_{k}.png", png(np.full((24, 24, 3), 30 * k, np.uint8)))
            z.writestr(f"mask/mask_1_{k}.png", png(np.full((24, 24), 255, np.uint8)))
            z.writestr(f"depth/depth_1_{k}.png", png(np.full((24, 24), 10 * k, np.uint8)))
    return path


def test_import_of_a_zip_with_a_damaged_central_directory_is_one_line(tmp_path, capsys):
    z = _seed_zip(tmp_path / "seed.zip")
    raw = z.read_bytes()
    i = raw.rfind(b"PK\x01\x02")
    z.write_bytes(raw[:i] + b"XX" + raw[i + 2:])
    one_line_error(capsys, ["data", "import", str(z), str(tmp_path / "out")], str(z))


def test_import_with_no_usable_sample_and_several_workers_is_one_line(tmp_path, capsys):
    import zipfile

    z = _seed_zip(tmp_path / "seed.zip")
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(z) as src, zipfile.ZipFile(broken, "w") as dst:
        for n in src.namelist():
            dst.writestr(n, b"not a picture" if n.startswith("bg/") else src.read(n))
    one_line_error(capsys, ["data", "import", str(broken), str(tmp_path / "out"), "--workers", "4"],
                   "none of the 3 samples could be imported")
    assert main(["data", "import", str(z), str(tmp_path / "out0"), "--workers", "0"]) == 0  # 0: in this process


def test_a_zip_member_that_inflates_past_the_limit_is_skipped_not_read(tmp_path, capsys):
    import zipfile

    z = _seed_zip(tmp_path / "seed.zip")
    with zipfile.ZipFile(z, "a", zipfile.ZIP_DEFLATED) as f:
        f.writestr("fg_bg/fg_bg_1_9.png", bytes(300 << 20))  # 300 MB of zeros, ~300 KB compressed
        f.writestr("mask/mask_1_9.png", bytes(10))
        f.writestr("depth/depth_1_9.png", bytes(10))
    assert main(["data", "import", str(z), str(tmp_path / "out"), "--workers", "1"]) == 0
    report = json.loads((tmp_path / "out" / "import_report.json").read_text())
    assert any("fg_bg_1_9" in p["file"] and "limit" in p["problem"] for p in report["skipped"]), report["skipped"]


# ---------------------------------------------------------------------------------------------------- predict


@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path]:
    import numpy as np
    from PIL import Image

    bg = np.full((24, 32, 3), 80, np.uint8)
    img = bg.copy()
    img[6:18, 8:20] = (230, 40, 40)
    Image.fromarray(bg).save(tmp_path / "bg.png")
    Image.fromarray(img).save(tmp_path / "img.png")
    return tmp_path / "bg.png", tmp_path / "img.png"


def test_threshold_makes_the_binary_mask_and_the_probability_is_its_own_file(ckpt, pair, tmp_path):
    import numpy as np
    from PIL import Image

    masks = {}
    for t in ("0.01", "0.99"):
        out = tmp_path / f"p{t}"
        assert main(["predict", "--ckpt", str(ckpt), "--bg", str(pair[0]), "--image", str(pair[1]), "--out",
                     str(out), "--threshold", t, "--device", "cpu"]) == 0
        masks[t] = np.asarray(Image.open(out / "mask.png"))
        prob = np.asarray(Image.open(out / "mask_prob.png")).astype(np.float32) / 255
        assert set(np.unique(masks[t])) <= {0, 255}
        # mask.png is mask_prob >= threshold (up to the 8-bit rounding of the probability file)
        sure = np.abs(prob - float(t)) > 1 / 255
        assert ((masks[t] == 255) == (prob >= float(t)))[sure].all()
    assert (masks["0.01"] >= masks["0.99"]).all()
    assert (tmp_path / "p0.01" / "overlay.png").read_bytes() != b""


@pytest.mark.parametrize("value", ["nan", "5", "0", "1", "-0.5", "inf"])
def test_a_threshold_outside_zero_one_is_refused(ckpt, pair, tmp_path, capsys, value):
    one_line_error(capsys, ["predict", "--ckpt", str(ckpt), "--bg", str(pair[0]), "--image", str(pair[1]),
                            "--out", str(tmp_path / "p"), "--threshold", value], "--threshold")
    from maskdepth.errors import UserError
    from maskdepth.predict import load_model

    with pytest.raises(UserError, match="threshold"):
        load_model(ckpt, "cpu", threshold=float(value))


def test_predict_outputs_and_special_inputs_are_one_line(ckpt, pair, tmp_path, capsys):
    import os

    (tmp_path / "afile").write_text("x")
    base = ["predict", "--ckpt", str(ckpt), "--bg", str(pair[0])]
    one_line_error(capsys, [*base, "--image", str(pair[1]), "--out", str(tmp_path / "afile" / "p")], "afile")
    one_line_error(capsys, [*base, "--image", "/dev/null", "--out", str(tmp_path / "p")], "/dev/null",
                   "not a regular file")
    os.mkfifo(tmp_path / "fifo")
    one_line_error(capsys, [*base, "--image", str(tmp_path / "fifo"), "--out", str(tmp_path / "p")], "fifo")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if not os.access(ro, os.W_OK):  # root may write anywhere: nothing to check then
            one_line_error(capsys, [*base, "--image", str(pair[1]), "--out", str(ro / "p")], "cannot write")
    finally:
        ro.chmod(0o755)
    # an output that is one of the inputs is never overwritten, --force or not
    shutil.copy(pair[1], tmp_path / "mask.png")
    one_line_error(capsys, [*base, "--image", str(tmp_path / "mask.png"), "--out", str(tmp_path), "--force"],
                   "is an input")


def test_predict_skip_bad_and_resume_of_a_folder(ckpt, pair, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(4):
        shutil.copy(pair[1], frames / f"f{i}.png")
    (frames / "f2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    base = ["predict", "--ckpt", str(ckpt), "--bg", str(pair[0]), "--image", str(frames), "--out", str(out),
            "--batch-size", "2", "--device", "cpu"]
    one_line_error(capsys, base, "f2.png")  # without --skip-bad the first bad picture stops the run
    one_line_error(capsys, [*base, "--skip-bad"], "already exists")  # what it wrote is not overwritten
    assert main([*base, "--skip-bad", "--resume"]) == 0  # finishes what is left, passing over the bad one
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "f2.png" in captured.err and "skipped 1 bad pair" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["f0", "f1", "f3"]
    (out / "f1" / "overlay.png").unlink()  # as if killed before the last file
    (frames / "f2.png").write_bytes(pair[1].read_bytes())
    before = (out / "f0" / "mask.png").stat().st_mtime_ns
    assert main([*base, "--resume"]) == 0
    assert "wrote 2 prediction" in capsys.readouterr().out
    assert (out / "f1" / "overlay.png").is_file() and (out / "f2" / "overlay.png").is_file()
    assert (out / "f0" / "mask.png").stat().st_mtime_ns == before


def test_top_level_load_model_forwards_its_options(ckpt):
    import maskdepth

    p = maskdepth.load_model(ckpt, "cpu", threshold=0.3, batch_size=3, size=40, native=False)
    assert (p.threshold, p.batch_size, p.size) == (0.3, 3, 40)


# ---------------------------------------------------------------------------------------------------- leftovers


def test_resume_removes_a_killed_checkpoint_writes_temporary_file(made, tmp_path):
    from maskdepth.cli import main as cli

    run = tmp_path / "run"
    args = ["train", "--data", str(made), "--out", str(run), "--model", "maskdepth-small", "--size", "32",
            "--batch-size", "4", "--workers", "0", "--steps", "1", "--set", "train.samples=0", "--set",
            "data.eval_split="]
    assert cli(args) == 0
    stale = run / ".last.safetensors.abcd1234.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert cli(["train", "--resume", str(run)]) == 0
    assert not stale.exists()


def test_a_second_data_make_into_the_same_folder_says_another_is_running(tmp_path, capsys):
    from maskdepth.data.format import MAKE_LOCK
    from maskdepth.fileio import folder_lock

    out = tmp_path / "data"
    out.mkdir()
    with folder_lock(out / MAKE_LOCK, "`maskdepth data make`"):  # stands in for a make still running
        one_line_error(capsys, ["data", "make", str(out), "--size", "32", "--backgrounds", "2", "--foregrounds", "2",
                                "--per-pair", "1", "--quiet"], "another `maskdepth data make` is writing")
    assert main(["data", "make", str(out), "--size", "32", "--backgrounds", "2", "--foregrounds", "2",
                 "--per-pair", "1", "--quiet"]) == 0


def test_export_never_writes_over_its_own_checkpoint(ckpt, tmp_path, capsys):
    own = Path(shutil.copy(ckpt, tmp_path / "m.safetensors"))
    before = own.read_bytes()
    one_line_error(capsys, ["export", str(own), "--onnx", str(own), "--force", "--no-check"], "is the checkpoint")
    assert own.read_bytes() == before
