"""Test-wide settings: one compute thread per test process.

On a small shared machine idle torch threads spin-wait and fight loader workers and other processes for the
cores; one thread keeps every test's time steady. Nothing here changes what a test checks.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

# A tiny checkpoint's header: trained at 48x48, metric depth up to 10 m stored in millimetre steps.
TINY_HEADER = {"train_size": [48, 48], "depth": {"unit": "m", "scale": 0.001, "max": 10.0}}


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """An untrained maskdepth-small (width 8) checkpoint: seconds to load and run, real code paths."""
    from maskdepth.checkpoint import save_checkpoint
    from maskdepth.models import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-ckpt") / "tiny.safetensors"
    save_checkpoint(path, create_model("maskdepth-small", width=8), TINY_HEADER)
    return path


def load_script(name: str):
    """scripts/`name`.py as a module (the scripts folder is not a package), to test its functions."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
