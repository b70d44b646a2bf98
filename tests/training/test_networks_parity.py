"""training/networks.py reproduces outputs recorded from the official StyleGAN2-ADA-PyTorch networks.

Each case folder (see <reference dir>/README.md) holds constructor kwargs, the official state dicts
and recorded inputs/outputs. We build our G and D from the kwargs, load the state dicts with strict
name and shape matching, and compare every recorded output in float32 (max abs error <= 1e-4).
The reference dir is $SG2KD_REFERENCE_DIR, else <repo>/../shared/reference/sg2ada.
"""

import json
import os

import numpy as np
import pytest
import torch

from training import networks

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE_DIR = os.environ.get("SG2KD_REFERENCE_DIR",
                               os.path.join(os.path.dirname(REPO_ROOT), "shared", "reference", "sg2ada"))
CASES = ["r32_skip_resnet_uncond", "r32_orig_orig_cond10", "r64_resnet_skip_uncond", "r16_skip_resnet_cond3_rgb"]
TOLERANCE = 1e-4


def _case_dir(case):
    path = os.path.join(REFERENCE_DIR, case)
    if not os.path.isdir(path):
        pytest.skip(f"reference case {path} not found: set SG2KD_REFERENCE_DIR to the folder holding the "
                    "sg2ada case folders (kwargs.json, G_state.npz, D_state.npz, io.npz)")
    return path


def _load_strict(module, npz_path):
    """Load an npz state dict into `module`; names and shapes must match exactly."""
    with np.load(npz_path) as data:
        state = {name: torch.from_numpy(data[name].copy()) for name in data.files}
    ours = module.state_dict()
    assert sorted(state) == sorted(ours), (
        f"name mismatch: missing {sorted(set(ours) - set(state))}, unexpected {sorted(set(state) - set(ours))}")
    for name, value in state.items():
        assert tuple(value.shape) == tuple(ours[name].shape), f"{name}: {tuple(value.shape)} vs {tuple(ours[name].shape)}"
    module.load_state_dict(state, strict=True)


@pytest.fixture(scope="module", params=CASES)
def case(request):
    """(G, D, io arrays) for one reference case, built on the CPU in eval mode."""
    path = _case_dir(request.param)
    with open(os.path.join(path, "kwargs.json")) as f:
        kwargs = json.load(f)
    G_kwargs = {k: v for k, v in kwargs["G_kwargs"].items() if k != "class_name"}
    D_kwargs = {k: v for k, v in kwargs["D_kwargs"].items() if k != "class_name"}
    G = networks.Generator(**G_kwargs).eval().requires_grad_(False)
    D = networks.Discriminator(**D_kwargs).eval().requires_grad_(False)
    _load_strict(G, os.path.join(path, "G_state.npz"))
    _load_strict(D, os.path.join(path, "D_state.npz"))
    with np.load(os.path.join(path, "io.npz")) as data:
        io = {name: torch.from_numpy(data[name].copy()) for name in data.files}
    return request.param, G, D, io


def _compare(case_name, what, got, expected):
    assert got.dtype == torch.float32
    assert got.shape == expected.shape, f"{case_name} {what}: shape {tuple(got.shape)} vs {tuple(expected.shape)}"
    err = (got - expected).abs().max().item()
    assert err <= TOLERANCE, f"{case_name} {what}: max abs error {err:.3g} > {TOLERANCE}"
    return err


def test_generator_matches_reference(case):
    name, G, _, io = case
    z, c = io["z"], io["c"]
    with torch.no_grad():
        ws = G.mapping(z, c, truncation_psi=1)
        _compare(name, "ws", ws, io["ws"])
        _compare(name, "ws_trunc07", G.mapping(z, c, truncation_psi=0.7), io["ws_trunc07"])
        # Synthesis runs on the recorded ws so that its error is measured on its own.
        _compare(name, "img_const", G.synthesis(io["ws"], noise_mode="const"), io["img_const"])
        _compare(name, "img_none", G.synthesis(io["ws"], noise_mode="none"), io["img_none"])
        img = G(z, c, truncation_psi=0.7, noise_mode="const")
        _compare(name, "img_trunc07_const", img, io["img_trunc07_const"])


def test_generator_fused_and_separate_modconv_agree(case):
    name, G, _, io = case
    with torch.no_grad():
        fused = G.synthesis(io["ws"], noise_mode="const", fused_modconv=True)
        separate = G.synthesis(io["ws"], noise_mode="const", fused_modconv=False)
    _compare(name, "img_const (separate modconv)", separate, io["img_const"])
    _compare(name, "img_const (fused modconv)", fused, io["img_const"])


def test_discriminator_matches_reference(case):
    name, _, D, io = case
    img, c, real = io["img_const"], io["c"], io["real"]
    with torch.no_grad():
        _compare(name, "D_logits_fake_b4", D(img[:4], c[:4]), io["D_logits_fake_b4"])
        _compare(name, "D_logits_fake_b8", D(img, c), io["D_logits_fake_b8"])
        _compare(name, "D_logits_real_b8", D(real, c), io["D_logits_real_b8"])
