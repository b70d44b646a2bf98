"""stylegan2_ada_kd.teacher: spec parsing, offline loading from --teacher-ckpt, preprocessing, errors."""

import open_clip
import pytest
import torch
import torch.nn.functional as F

from stylegan2_ada_kd import teacher as tm
from tests.kd.clip_fixtures import TINY_EMBED_DIM, TINY_NAME, make_tiny_clip_checkpoint


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    return make_tiny_clip_checkpoint(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="module")
def teacher(tiny_clip):
    spec, ckpt = tiny_clip
    return tm.build_teacher(spec, ckpt=ckpt)


def images(n=3, c=3, size=16, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("spec, expected", [
    ("ViT-B-32:openai", ("ViT-B-32", "openai")),
    ("ViT-B-32", ("ViT-B-32", None)),
    ("RN50:yfcc15m", ("RN50", "yfcc15m")),
    ("/cfg/tiny.json:random", ("/cfg/tiny.json", "random")),
    ("/cfg/tiny.json", ("/cfg/tiny.json", None)),
    ("C:\\cfg\\tiny.json", ("C:\\cfg\\tiny.json", None)),
    ("hf-hub:org/model", ("hf-hub:org/model", None)),
    ("local-dir:/models/clip", ("local-dir:/models/clip", None)),
])
def test_parse_teacher_spec(spec, expected):
    assert tm.parse_teacher_spec(spec) == expected


def test_ckpt_loads_the_saved_weights_frozen_and_outside_autograd(tiny_clip, teacher):
    spec, ckpt = tiny_clip
    reference = open_clip.create_model(TINY_NAME, pretrained=None)
    reference.load_state_dict(torch.load(ckpt, weights_only=True))
    reference.eval()
    for name, param in teacher.model.state_dict().items():
        assert torch.equal(param, reference.state_dict()[name]), name
    assert not any(p.requires_grad for p in teacher.model.parameters()) and not teacher.model.training
    assert teacher.embed_dim == TINY_EMBED_DIM and teacher.image_size == (32, 32)
    x = images(size=32)
    with torch.no_grad():
        want = reference.encode_image((((x + 1) / 2) - teacher.mean) / teacher.std)
    got = teacher.encode_images(x)
    assert got.shape == (3, TINY_EMBED_DIM) and got.dtype == torch.float32 and not got.requires_grad
    assert torch.allclose(got, want, atol=1e-5)
    tokens = open_clip.get_tokenizer(TINY_NAME)(["a cat", "a dog"])
    with torch.no_grad():
        assert torch.allclose(teacher.encode_texts(["a cat", "a dog"]), reference.encode_text(tokens), atol=1e-5)


def test_building_the_teacher_leaves_the_rng_alone(tiny_clip):
    spec, ckpt = tiny_clip
    torch.manual_seed(5)
    want = torch.rand(3)
    torch.manual_seed(5)
    tm.build_teacher(spec, ckpt=ckpt)
    assert torch.equal(torch.rand(3), want)


def test_clip_preprocess_is_bilinear_resize_then_clip_normalisation(teacher):
    x = images(size=16)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).reshape(1, 3, 1, 1)
    resized = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(teacher.prepare(x), ((resized + 1) / 2 - mean) / std, atol=1e-6)
    # A 64-px image is downsampled with antialiasing: a 2x2 checkerboard averages to grey.
    board = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 2.0 - 1
    flat = teacher.prepare(board.expand(1, 3, 64, 64))
    assert torch.allclose(flat[..., 1:-1, 1:-1], ((0.5 - mean) / std).expand(1, 3, 30, 30), atol=1e-5)  # not edges


def test_released_preprocess_is_nearest_upsampling_of_raw_images(tiny_clip):
    spec, ckpt = tiny_clip
    released = tm.build_teacher(spec, ckpt=ckpt, preprocess="released")
    x = images(size=16)
    want = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # 16 -> 32: each pixel becomes 2x2
    assert torch.equal(released.prepare(x), want)
    gray = images(c=1, size=32)
    assert torch.equal(released.prepare(gray), gray.expand(-1, 3, -1, -1))  # 1 channel repeated, size kept
    with pytest.raises(ValueError, match="unknown preprocess"):
        tm.build_teacher(spec, ckpt=ckpt, preprocess="bicubic")


def test_grad_mode_reaches_the_image_and_never_the_weights(teacher):
    x = images().requires_grad_()
    out = teacher.encode_images(x, grad=True)
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.model.parameters())
    frozen = teacher.encode_images(images().requires_grad_())
    assert not frozen.requires_grad and not frozen.is_inference()  # usable in autograd as a constant


def test_missing_ckpt_and_unavailable_weights_are_one_line_errors(tiny_clip, tmp_path):
    spec, _ = tiny_clip
    missing = str(tmp_path / "nope.pt")
    with pytest.raises(tm.TeacherError) as info:
        tm.build_teacher(spec, ckpt=missing)
    assert missing in info.value.message and "--teacher-ckpt" in info.value.message
    assert "\n" not in info.value.message
    # HF_HUB_OFFLINE=1 (tests/conftest.py): the tag cannot be fetched; the error names the model and the fix.
    with pytest.raises(tm.TeacherError) as info:
        tm.build_teacher(spec + ":openai")
    message = info.value.message
    assert TINY_NAME + ":openai" in message and "--teacher-ckpt=PATH" in message and "\n" not in message
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(tm.TeacherError, match="cannot load its weights from file"):
        tm.build_teacher(spec, ckpt=str(broken))


def test_spec_errors_name_the_fix(tiny_clip, tmp_path):
    spec, _ = tiny_clip
    with pytest.raises(tm.TeacherError, match="no weights named"):
        tm.build_teacher(spec)
    with pytest.raises(tm.TeacherError, match="unknown open_clip model 'NoSuchNet'"):
        tm.build_teacher("NoSuchNet:openai")
    with pytest.raises(tm.TeacherError, match="does not exist"):
        tm.build_teacher(str(tmp_path / "missing.json") + ":random")
    rand = tm.build_teacher(spec + ":random")
    assert rand.embed_dim == TINY_EMBED_DIM
