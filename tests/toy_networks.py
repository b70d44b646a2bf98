"""Tiny persistent stand-ins for G with the attributes the CLIs rely on (not real StyleGAN2)."""

import torch

from torch_utils import persistence


@persistence.persistent_class
class ToySynthesis(torch.nn.Module):
    """ws [N, num_ws, w_dim] -> img [N, C, R, R] in [-1, 1] via one linear map of the mean w."""

    def __init__(self, w_dim, img_resolution, img_channels, num_ws=4, num_fp16_res=0, conv_clamp=None):
        super().__init__()
        self.w_dim, self.num_ws = w_dim, num_ws
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.num_fp16_res, self.conv_clamp = num_fp16_res, conv_clamp
        self.to_img = torch.nn.Linear(w_dim, img_channels * img_resolution**2)

    def forward(self, ws, noise_mode="const"):
        img = torch.tanh(self.to_img(ws.mean(dim=1)))
        return img.reshape(-1, self.img_channels, self.img_resolution, self.img_resolution)


@persistence.persistent_class
class ToyGenerator(torch.nn.Module):
    """z [N, z_dim], c [N, c_dim] -> img; w = z (+ embedded c), truncated toward zero."""

    def __init__(self, z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3, synthesis_kwargs=None):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.embed = torch.nn.Linear(max(c_dim, 1), w_dim, bias=False)
        self.synthesis = ToySynthesis(w_dim, img_resolution, img_channels, **(synthesis_kwargs or {}))

    def mapping(self, z, c, truncation_psi=1):
        w = z + (self.embed(c) if self.c_dim else 0)
        return (w * truncation_psi).unsqueeze(1).repeat(1, self.synthesis.num_ws, 1)

    def forward(self, z, c, truncation_psi=1, noise_mode="const"):
        return self.synthesis(self.mapping(z, c, truncation_psi), noise_mode=noise_mode)
