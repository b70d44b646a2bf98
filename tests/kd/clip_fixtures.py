"""A tiny open_clip CLIP saved to a local weights file, for running KD offline in tests.

`make_tiny_clip_checkpoint(dir)` writes `<dir>/TinyCLIP-kdtest.json` (an open_clip model config,
32x32 input, 2 vision and 1 text layers) and `<dir>/tiny_clip.pt` (its state_dict, fixed seed) and
returns (teacher spec, ckpt path): pass them as KDLoss(teacher=spec, teacher_ckpt=ckpt) or
`--teacher=SPEC --teacher-ckpt=CKPT`. Results are cached per directory, so a session-scoped fixture
pays the ~0.5 s once:

    @pytest.fixture(scope="session")
    def tiny_clip(tmp_path_factory):
        return make_tiny_clip_checkpoint(tmp_path_factory.mktemp("tiny_clip"))
"""

import json
import os

import torch

TINY_NAME = "TinyCLIP-kdtest"
TINY_EMBED_DIM = 16
TINY_CONFIG = {
    "embed_dim": TINY_EMBED_DIM,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    # SimpleTokenizer ids need the full 49408-entry vocabulary; a narrow width keeps it small.
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
_CACHE = {}  # abs dir -> (spec, ckpt)


def make_tiny_clip_checkpoint(directory, seed=0):
    """Write the tiny CLIP's config and weights into `directory` (once) -> (spec, ckpt_path)."""
    import open_clip

    directory = os.path.abspath(str(directory))
    if directory in _CACHE and all(os.path.isfile(p) for p in (_CACHE[directory][0], _CACHE[directory][1])):
        return _CACHE[directory]
    os.makedirs(directory, exist_ok=True)
    config_path = os.path.join(directory, TINY_NAME + ".json")
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(TINY_CONFIG, f)
    open_clip.add_model_config(config_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY_NAME, pretrained=None)
    ckpt_path = os.path.join(directory, "tiny_clip.pt")
    torch.save(model.state_dict(), ckpt_path)
    _CACHE[directory] = (config_path, ckpt_path)
    return _CACHE[directory]
