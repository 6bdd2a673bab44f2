"""Model registry, the seed presets and the default model: shapes, bounds, rebuilds, export, costs."""

from __future__ import annotations

import importlib.util
import json
import warnings

import pytest
import torch

from maskdepth.cli import main
from maskdepth.errors import UserError
from maskdepth.models import create_model, list_models
from maskdepth.models.stats import model_stats

# Parameter counts the seed documents state (seed 002 says "16 million").
DOCUMENTED_PARAMS = {
    "seed-resnet-twobranch": 3_199_552,
    "seed-densenet": 1_977_280,
    "seed-resunet": 16_000_000,
    "seed-dilated-pixelshuffle": 5_230_720,
    "seed-updown": 3_631_616,
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_model(name: str, **kw):
    with torch.device("meta"):
        return create_model(name, **kw)


@pytest.mark.parametrize("name", sorted(DOCUMENTED_PARAMS))
def test_seed_parameter_counts_match_documents(name):
    count = n_params(meta_model(name))
    assert abs(count - DOCUMENTED_PARAMS[name]) / DOCUMENTED_PARAMS[name] < 0.02, count


def test_registry_names_seeds_and_default_presets():
    names = list_models()
    assert names[0] == "maskdepth"
    assert set(DOCUMENTED_PARAMS) | {"maskdepth-small", "maskdepth-large"} <= set(names)
    assert 0.5e6 <= n_params(meta_model("maskdepth-small")) <= 1e6
    assert 2e6 <= n_params(meta_model("maskdepth")) <= 4e6
    assert create_model("default").model_name == "maskdepth"


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_at_odd_size(name):
    torch.manual_seed(0)
    model = create_model(name, depth_max=3.0).train()
    # the seeds and the large preset are slow on a CPU: a smaller odd size for them
    shape = (2, 3, 97, 131) if name in ("maskdepth", "maskdepth-small", "maskdepth-siamese") else (2, 3, 45, 67)
    bg, image = torch.rand(shape), torch.rand(shape)
    mask_logits, depth = model(bg, image)
    assert mask_logits.shape == depth.shape == (shape[0], 1, *shape[2:])
    assert torch.isfinite(mask_logits).all()
    assert (depth > 0).all() and (depth < 3.0).all()
    (mask_logits.square().mean() + depth.mean()).backward()
    # every parameter takes part (DistributedDataParallel needs no find_unused_parameters)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_model_kwargs_rebuild_the_same_network(name):
    model = meta_model(name, depth_max=20.0)
    kwargs = json.loads(json.dumps(model.model_kwargs))  # JSON-able, as a checkpoint header stores them
    assert kwargs["depth_max"] == 20.0
    rebuilt = meta_model(model.model_name, **kwargs)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_default_model_kwargs_are_complete():
    model = meta_model("maskdepth", width=16, depths=(1, 1, 1))
    assert model.model_kwargs == {"width": 16, "depths": [1, 1, 1], "norm": "batch", "depth_max": 10.0}
    assert model.stride == 16


def test_unknown_model_and_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="unknown model 'resnet50'; known models: maskdepth, .*seed-updown"):
        create_model("resnet50")
    with pytest.raises(UserError, match="model 'seed-densenet': .*width.*it takes: depth_max"):
        create_model("seed-densenet", width=8)
    with pytest.raises(UserError, match="depth_max must be > 0"):
        create_model("maskdepth-small", depth_max=0)
    with pytest.raises(UserError, match="norm must be"):
        create_model("maskdepth-small", norm="layer")


def test_group_norm_variant_runs_at_batch_one():
    model = create_model("maskdepth", width=8, depths=(1, 1), norm="group").train()
    mask_logits, depth = model(torch.rand(1, 3, 33, 35), torch.rand(1, 3, 33, 35))
    assert mask_logits.shape == depth.shape == (1, 1, 33, 35)


def test_eval_prediction_does_not_depend_on_the_batch():
    torch.manual_seed(0)
    model = create_model("maskdepth-small").eval()
    bg, image = torch.rand(3, 3, 40, 56), torch.rand(3, 3, 40, 56)
    with torch.no_grad():
        batch = model(bg, image)
        single = model(bg[1:2], image[1:2])
    for b, s in zip(batch, single):
        torch.testing.assert_close(b[1:2], s, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_and_channels_last_give_float32_outputs():
    model = create_model("maskdepth-small").to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 48, 40).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mask_logits, depth = model(x, x)
    assert mask_logits.dtype == depth.dtype == torch.float32
    assert mask_logits.shape == (2, 1, 48, 40)


def test_default_model_compiles_to_one_graph():
    model = create_model("maskdepth", width=8, depths=(1, 1, 1, 1))
    explained = torch._dynamo.explain(model)(torch.rand(1, 3, 45, 67), torch.rand(1, 3, 45, 67))
    assert explained.graph_count == 1 and explained.graph_break_count == 0


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
                    reason="onnx / onnxruntime not installed")
def test_default_model_exports_to_onnx_with_dynamic_size(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    model = create_model("maskdepth", width=8, depths=(1, 1, 1, 1)).eval()
    names = ["bg", "image", "mask_logits", "depth"]
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(1, 3, 45, 67), torch.rand(1, 3, 45, 67)), str(path), dynamo=False,
                          opset_version=17, input_names=names[:2], output_names=names[2:],
                          dynamic_axes={k: {0: "n", 2: "h", 3: "w"} for k in names})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    bg, image = torch.rand(2, 3, 70, 33), torch.rand(2, 3, 70, 33)
    got = session.run(None, {"bg": bg.numpy(), "image": image.numpy()})
    with torch.no_grad():
        want = model(bg, image)
    for g, w in zip(got, want):
        assert g.shape == (2, 1, 70, 33)
        torch.testing.assert_close(torch.from_numpy(g), w, atol=1e-4, rtol=1e-4)

    # the CPU speed of the design rests on these: no 6-D Transpose (an unshuffle) and full-resolution conv inputs
    # in multiples of 8 channels (ONNX Runtime's blocked kernels); see docs/ARCHITECTURE.md, speed notes
    import onnx

    perms = [list(a.ints) for node in onnx.load(str(path)).graph.node if node.op_type == "Transpose"
             for a in node.attribute if a.name == "perm"]
    assert all(len(perm) <= 4 for perm in perms), perms


@pytest.mark.parametrize("name", ["maskdepth", "maskdepth-small", "maskdepth-large", "maskdepth-siamese"])
def test_default_design_full_resolution_convs_take_multiples_of_8_channels(name):
    model = create_model(name)
    first = next(m for m in model.refine if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels % 8 == 0
    assert not any(isinstance(m, torch.nn.PixelUnshuffle) for m in model.modules())


def _resnet18_state(in_channels: int) -> dict[str, torch.Tensor]:
    from maskdepth.models.seed_resunet import ResNet18Encoder

    torch.manual_seed(1)
    encoder = ResNet18Encoder(in_channels)
    for p in encoder.parameters():
        torch.nn.init.normal_(p)
    return {f"module.{k}": v for k, v in encoder.state_dict().items()} | {"fc.weight": torch.zeros(1000, 512)}


def test_resunet_loads_user_encoder_weights(tmp_path):
    from safetensors.torch import save_file

    state = _resnet18_state(3)
    save_file(state, str(tmp_path / "r18.safetensors"))
    torch.save(state, tmp_path / "r18.pth")
    for path in (tmp_path / "r18.safetensors", tmp_path / "r18.pth"):
        model = create_model("seed-resunet", encoder_weights=str(path))
        assert "encoder_weights" not in model.model_kwargs  # the checkpoint holds the weights
        torch.testing.assert_close(model.encoder.layer3[1].conv2.weight, state["module.layer3.1.conv2.weight"])
        stem = state["module.conv1.weight"] * 0.5
        torch.testing.assert_close(model.encoder.conv1.weight, torch.cat([stem, stem], dim=1))


def test_resunet_refuses_wrong_encoder_weights(tmp_path):
    from safetensors.torch import save_file

    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7)}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(UserError, match="partial.safetensors: not a ResNet18 state dict"):
        create_model("seed-resunet", encoder_weights=str(tmp_path / "partial.safetensors"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pth: cannot read encoder weights"):
        create_model("seed-resunet", encoder_weights=str(tmp_path / "junk.pth"))
    with pytest.raises(UserError, match="missing.pth: encoder weights file not found"):
        create_model("seed-resunet", encoder_weights=str(tmp_path / "missing.pth"))


def test_default_needs_far_fewer_flops_than_the_heavy_seeds():
    default = model_stats("maskdepth")
    for seed in ("seed-dilated-pixelshuffle", "seed-resunet"):
        other = model_stats(seed)
        assert default.gflops * 3 < other.gflops
        assert default.activation_mb < other.activation_mb


def test_models_command_prints_table_and_json(capsys):
    assert main(["models", "--size", "64"]) == 0
    table = capsys.readouterr().out
    assert "maskdepth (default)" in table and "seed-resunet" in table and "GFLOPs@64" in table
    assert main(["models", "--json", "--size", "64"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list_models()
    by_name = {r["name"]: r for r in rows}
    assert by_name["seed-dilated-pixelshuffle"]["params"] == 5_230_720
    assert all(r["gflops"] > 0 and r["activation_mb"] > 0 and r["size"] == 64 for r in rows)


def test_models_command_refuses_a_bad_size(capsys):
    assert main(["models", "--size", "2"]) == 2
    assert "--size 2: out of range" in capsys.readouterr().err


def test_tolerant_difference_forgives_a_small_shift_but_not_a_new_object():
    from maskdepth.models.maskdepth_net import _tolerant_difference

    torch.manual_seed(0)
    bg = torch.rand(1, 3, 32, 32)
    shifted = torch.roll(bg, shifts=(1, -2), dims=(2, 3))
    d = _tolerant_difference(bg, shifted, 2)[..., 4:-4, 4:-4]  # away from the border the shift is explained
    assert d.abs().max() < 1e-6 and (shifted - bg).abs().amax(1)[..., 4:-4, 4:-4].mean() > 0.1
    image = bg.clone()
    image[..., 10:20, 10:20] = torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1)
    assert _tolerant_difference(bg, image, 2)[..., 12:18, 12:18].min() > 0.05


def test_siamese_design_exports_with_dynamic_size(tmp_path):
    import onnxruntime as ort

    from maskdepth.export import export_onnx

    model = create_model("maskdepth-siamese", width=8, depths=(1, 1)).eval()
    path = tmp_path / "s.onnx"
    export_onnx(model, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    bg, image = torch.rand(1, 3, 40, 56), torch.rand(1, 3, 40, 56)
    got = sess.run(None, {"bg": bg.numpy(), "image": image.numpy()})
    want = model(bg, image)
    for g, w in zip(got, want):
        torch.testing.assert_close(torch.from_numpy(g), w, atol=1e-4, rtol=1e-4)


def test_siamese_design_grown_from_the_first_design_starts_as_it():
    from maskdepth.checkpoint import load_matching

    torch.manual_seed(0)
    old = create_model("maskdepth", width=8, depths=(1, 1))
    old(torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32))  # BatchNorm statistics that are not the identity
    old.eval()
    new = create_model("maskdepth-siamese", width=8, depths=(1, 1)).eval()
    counts = load_matching(new, old.state_dict())
    assert counts["widened"] == 1 and counts["fresh"] > 0  # the stem's tolerant input; embed and merge
    bg, image = torch.rand(2, 3, 40, 48), torch.rand(2, 3, 40, 48)
    for a, b in zip(old(bg, image), new(bg, image)):
        torch.testing.assert_close(a, b)


def test_refinement_input_equals_the_1x1_conv_of_the_full_resolution_concatenation():
    from maskdepth.models.maskdepth_net import FUSED_CHANNELS, _up

    torch.manual_seed(0)
    model = create_model("maskdepth", width=16).eval()
    for p in model.parameters():  # nothing at zero, so every block of the folded weights counts
        torch.nn.init.normal_(p, std=0.3)
    top = torch.randn(2, model.refine_proj.in_channels, 6, 10)
    heads, fused = torch.randn(2, 2, 6, 10), torch.randn(2, FUSED_CHANNELS, 24, 40)
    explicit = model.refine[0](torch.cat([_up(model.refine_proj(top), 4), fused, _up(heads, 4)], dim=1))
    with torch.no_grad():
        assert torch.allclose(model._refine_input(top, heads, fused), explicit, atol=1e-4)
