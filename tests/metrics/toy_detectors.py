"""Tiny TorchScript detectors and toy generators for the metrics tests (built and saved by the tests)."""

import warnings

import numpy as np
import torch


class ToyDetector(torch.nn.Module):
    """Official call convention: fixed random projection of 4x4-pooled pixels; softmax classes; LPIPS = pixels."""

    def __init__(self, feature_dim: int = 16, num_classes: int = 5, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Parameter(torch.randn([48, feature_dim], generator=gen))
        self.classifier = torch.nn.Parameter(torch.randn([feature_dim, num_classes], generator=gen))

    def forward(self, img: torch.Tensor, return_features: bool = False, no_output_bias: bool = False,
                resize_images: bool = True, return_lpips: bool = False) -> torch.Tensor:
        x = img.to(torch.float32) / 255
        if return_lpips:
            return x.flatten(1)
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, [4, 4]).flatten(1)
        features = pooled @ self.proj
        if return_features:
            return features
        return torch.softmax(features @ self.classifier, dim=1)


class BrightnessClassDetector(torch.nn.Module):
    """Predicts class floor(mean pixel / 256 * K) with certainty (one-hot probabilities [N, K])."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, img: torch.Tensor, return_features: bool = False, no_output_bias: bool = False,
                resize_images: bool = True, return_lpips: bool = False) -> torch.Tensor:
        mean = img.to(torch.float32).mean(dim=[1, 2, 3])
        classes = (mean / 256 * self.num_classes).floor().clamp(0, self.num_classes - 1).to(torch.int64)
        return torch.nn.functional.one_hot(classes, self.num_classes).to(torch.float32)


class PlainStatsNet(torch.nn.Module):
    """A 'plain' detector (one tensor argument): returns [mean, min, max, height, width] of its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        flat = x.flatten(1)
        size = torch.tensor([x.shape[2], x.shape[3]], dtype=x.dtype).repeat(n, 1)
        return torch.cat([flat.mean(1, keepdim=True), flat.min(1, keepdim=True).values,
                          flat.max(1, keepdim=True).values, size], dim=1)


def save_detector(module, path):
    """torch.jit.script the module and save it; returns the path as a string."""
    with warnings.catch_warnings():  # torch 2.x marks TorchScript deprecated; the official detectors use it
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(module.eval()).save(str(path))
    return str(path)


class ReplayG(torch.nn.Module):
    """Generator whose i-th output (in call order) is dataset image i % len: same distribution as the reals."""

    def __init__(self, images, c_dim=0):
        super().__init__()
        self.images = torch.as_tensor(np.stack(images))  # uint8 [N, C, H, W]
        self.z_dim, self.c_dim = 4, c_dim
        self.img_channels, self.img_resolution = self.images.shape[1], self.images.shape[2]
        self.calls = 0

    def forward(self, z, c, **kwargs):
        idx = torch.arange(self.calls, self.calls + len(z)) % len(self.images)
        self.calls += len(z)
        # (v - 127.5) / 127.5 quantises back to exactly v: (x * 127.5 + 128) lands on v + 0.5.
        return (self.images[idx].to(torch.float32) - 127.5) / 127.5


class LevelG(torch.nn.Module):
    """Generator whose i-th output (in call order) is a flat image of level (i % K) * 256 / K + 8."""

    def __init__(self, num_levels=4, res=8):
        super().__init__()
        self.num_levels, self.z_dim, self.c_dim = num_levels, 4, 0
        self.img_channels, self.img_resolution = 3, res
        self.calls = 0

    def forward(self, z, c, **kwargs):
        levels = (torch.arange(self.calls, self.calls + len(z)) % self.num_levels).to(torch.float32)
        self.calls += len(z)
        value = levels * 256 / self.num_levels + 8
        img = value.view(-1, 1, 1, 1).expand(-1, 3, self.img_resolution, self.img_resolution)
        return (img - 127.5) / 127.5


class LinearG(torch.nn.Module):
    """Deterministic toy generator: img = tanh(z @ W + c @ V) as [N, 3, res, res]; mapping/synthesis for PPL."""

    def __init__(self, z_dim=4, c_dim=0, res=8, seed=0, constant=False):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, z_dim, 2
        self.img_channels, self.img_resolution = 3, res
        self.weight = torch.nn.Parameter(torch.randn([z_dim, 3 * res * res], generator=gen))
        self.label_weight = torch.nn.Parameter(torch.randn([max(c_dim, 1), 3 * res * res], generator=gen))
        self.constant = constant  # True: the output ignores the latent (PPL must be 0)

    def mapping(self, z, c, **kwargs):
        return (z * 0.5).unsqueeze(1).repeat(1, self.num_ws, 1)

    def synthesis(self, ws, **kwargs):
        w = ws.mean(dim=1) * (0 if self.constant else 1)
        return torch.tanh(w @ self.weight).view(-1, 3, self.img_resolution, self.img_resolution)

    def forward(self, z, c, **kwargs):
        x = z @ self.weight
        if self.c_dim:
            x = x + c @ self.label_weight
        return torch.tanh(x).view(-1, 3, self.img_resolution, self.img_resolution)
