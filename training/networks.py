"""StyleGAN2 generator and discriminator, as described in the StyleGAN2 and StyleGAN2-ADA papers.

Class names, constructor arguments, submodule names and parameter/buffer names and shapes follow
the official StyleGAN2-ADA-PyTorch networks, so their `state_dict`s load here with `strict=True`
and pickles written here also load in the official codebase.

Keep this module self-contained: persistent classes embed this file's source in network pickles,
and that source must run wherever the pickle is loaded. Import only the standard library, numpy,
torch, dnnlib and the `torch_utils` names the official codebase also provides (misc, persistence,
ops.bias_act, ops.conv2d_resample, ops.fma, ops.upfirdn2d).

Mixed precision: blocks in the top `num_fp16_res` resolutions run in float16 only on CUDA tensors;
on any other device everything runs in float32 (half-precision convolutions are far slower than
float32 on CPUs, and the results are what the float32 network computes).

Our addition: `Discriminator.forward(img, c, return_features=True)` also returns named
intermediate features (see `Discriminator.forward`); parameters, buffers and the default outputs
are unchanged.
"""

import os

import numpy as np
import torch

from torch_utils import misc, persistence
from torch_utils.ops import bias_act, conv2d_resample, fma, upfirdn2d

# ----------------------------------------------------------------------------
# Helpers.


def _fp16_active(use_fp16, force_fp32, device):
    """True when a block marked `use_fp16` should compute in float16 on `device` (CUDA only)."""
    return bool(use_fp16) and not force_fp32 and torch.device(device).type == "cuda"


def _channels_dict(resolutions, channel_base, channel_max, who):
    """{resolution: min(channel_base // resolution, channel_max)}; raise ValueError if any is 0."""
    channels = {res: min(channel_base // res, channel_max) for res in resolutions}
    if min(channels.values()) < 1:
        raise ValueError(f"{who}: channel_base={channel_base} gives 0 channels at resolution {max(resolutions)}; "
                         f"pass channel_base >= {max(resolutions)}")
    return channels


def _check_resolution(img_resolution, who):
    """log2 of `img_resolution`; raise ValueError unless it is a power of two >= 4."""
    log2 = int(np.rint(np.log2(img_resolution))) if img_resolution > 0 else 0
    if img_resolution < 4 or 2**log2 != img_resolution:
        raise ValueError(f"{who}: img_resolution={img_resolution}; pass a power of two >= 4 (4, 8, ..., 1024)")
    return log2


@misc.profiled_function
def normalize_2nd_moment(x, dim=1, eps=1e-8):
    """Scale `x` so that its mean square along `dim` is 1 (e.g. [N, C] -> [N, C]); `eps` avoids 0/0."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


# ----------------------------------------------------------------------------
# Modulated convolution.


@misc.profiled_function
def modulated_conv2d(
    x,                      # input activations [N, I, H, W]
    weight,                 # convolution weight [O, I, kh, kw]
    styles,                 # per-sample scale of each input channel [N, I]
    noise=None,             # added to the output, broadcastable to [N, O, H', W']; None = no noise
    up=1,                   # integer upsampling factor
    down=1,                 # integer downsampling factor
    padding=0,              # padding of the convolution, relative to the upsampled image
    resample_filter=None,   # low-pass filter for up/down-sampling (upfirdn2d.setup_filter); None = box
    demodulate=True,        # rescale each output channel of the modulated weight to unit norm
    flip_weight=True,       # False = true convolution instead of correlation (faster with up > 1)
    fused_modconv=True,     # one grouped convolution with per-sample weights instead of scaling x
):
    """Convolution whose weight is scaled per sample by `styles` (StyleGAN2's weight (de)modulation).

    Returns [N, O, H', W'] in x's dtype. Both paths compute the same function: the fused path builds
    the [N, O, I, kh, kw] weights and runs a grouped convolution; the other scales the activations
    before and after a shared convolution (cheaper when the batch is large or in training).
    """
    batch_size = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    misc.assert_shape(x, [None, in_channels, None, None])
    misc.assert_shape(styles, [batch_size, in_channels])

    if x.dtype == torch.float16 and demodulate:
        # Demodulation cancels any per-output-channel scale of the weight and any per-sample scale of
        # the styles, so normalising both first changes nothing but keeps float16 products in range.
        weight = weight * (1 / np.sqrt(in_channels * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    w = None
    dcoefs = None
    if fused_modconv or (demodulate and _reference_demodulation()):
        w = weight.unsqueeze(0) * styles.reshape(batch_size, 1, -1, 1, 1)  # [N, O, I, kh, kw]
    if demodulate and _reference_demodulation():
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]
    elif demodulate:
        dcoefs = demodulation_coefficients(weight, styles)
    conv_kwargs = dict(f=resample_filter, up=up, down=down, padding=padding, flip_weight=flip_weight)
    if not fused_modconv:
        return _modconv_separate(x, weight, styles, dcoefs, noise, conv_kwargs)
    if demodulate:
        w = w * dcoefs.reshape(batch_size, -1, 1, 1, 1)
    return _modconv_grouped(x, w, noise, conv_kwargs)


def demodulation_coefficients(weight, styles, eps=1e-8):
    """1 / ||styles[n, i] * weight[o, i, :, :]|| over (i, kh, kw): weight [O, I, kh, kw], styles [N, I] -> [N, O].

    The squared norm factors as sum_i styles[n, i]^2 * sum_{kh, kw} weight[o, i]^2, a [N, I] x [I, O]
    matrix product, so the [N, O, I, kh, kw] modulated weights need not exist; the reference's
    formulation builds them and, in training, spends more time on them than on the convolution.
    """
    return (styles.square() @ weight.square().sum(dim=[2, 3]).t() + eps).rsqrt()


def _reference_demodulation():
    """True when $SG2KD_DISABLE_CUSTOM_OPS asks for the reference implementations (parity checks, benchmarks).

    Read here rather than through torch_utils.custom_ops: this module's source travels in network
    pickles and must run in the official codebase too.
    """
    return os.environ.get("SG2KD_DISABLE_CUSTOM_OPS", "").strip().lower() in ("1", "true", "yes", "on")


def _modconv_separate(x, weight, styles, dcoefs, noise, conv_kwargs):
    """Modulated conv as scale -> shared conv -> demodulate (+ noise). x [N, I, H, W] -> [N, O, H', W']."""
    batch_size = x.shape[0]
    x = x * styles.to(x.dtype).reshape(batch_size, -1, 1, 1)
    x = conv2d_resample.conv2d_resample(x=x, w=weight.to(x.dtype), **conv_kwargs)
    if dcoefs is not None and noise is not None:
        return fma.fma(x, dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1), noise.to(x.dtype))
    if dcoefs is not None:
        return x * dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1)
    if noise is not None:
        return x + noise.to(x.dtype)
    return x


def _modconv_grouped(x, w, noise, conv_kwargs):
    """Modulated conv as one grouped conv with per-sample weights w [N, O, I, kh, kw] (+ noise)."""
    with misc.suppress_tracer_warnings():  # the batch size becomes a constant of a traced graph
        batch_size = int(x.shape[0])
    _, out_channels, in_channels, kh, kw = w.shape
    misc.assert_shape(w, [batch_size, out_channels, in_channels, kh, kw])
    x = x.reshape(1, -1, *x.shape[2:])  # [1, N*I, H, W]: the batch becomes groups of channels
    w = w.reshape(-1, in_channels, kh, kw)  # [N*O, I, kh, kw]
    x = conv2d_resample.conv2d_resample(x=x, w=w.to(x.dtype), groups=batch_size, **conv_kwargs)
    x = x.reshape(batch_size, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


# ----------------------------------------------------------------------------
# Equalised-learning-rate layers.


@persistence.persistent_class
class FullyConnectedLayer(torch.nn.Module):
    """Dense layer with equalised learning rate: [N, in_features] -> [N, out_features].

    The weight is stored divided by `lr_multiplier` and multiplied at run time by
    lr_multiplier / sqrt(in_features), so every layer learns at the same effective rate.
    """

    def __init__(
        self,
        in_features,            # number of input features
        out_features,           # number of output features
        bias=True,              # add a learned bias before the activation
        activation="linear",    # activation name from bias_act.activation_funcs ('linear', 'lrelu', ...)
        lr_multiplier=1,        # learning-rate multiplier of weight and bias
        bias_init=0,            # initial value of every bias entry
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], np.float32(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        """x [N, in_features] -> [N, out_features] in x's dtype."""
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act.bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


@persistence.persistent_class
class Conv2dLayer(torch.nn.Module):
    """Convolution with equalised learning rate and optional 2x up/down-sampling.

    x [N, in_channels, H, W] -> [N, out_channels, H*up/down, W*up/down] (padding keeps the size).
    """

    def __init__(
        self,
        in_channels,                    # number of input channels
        out_channels,                   # number of output channels
        kernel_size,                    # width and height of the kernel
        bias=True,                      # add a learned bias before the activation
        activation="linear",            # activation name from bias_act.activation_funcs
        up=1,                           # integer upsampling factor
        down=1,                         # integer downsampling factor
        resample_filter=[1, 3, 3, 1],   # 1D taps of the low-pass filter used for resampling  # noqa: B006
        conv_clamp=None,                # clamp the output to +-conv_clamp (times gain); None = off
        channels_last=False,            # store the weight in channels_last memory format
        trainable=True,                 # False = weight and bias are buffers (frozen, e.g. Freeze-D)
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size**2))
        self.act_gain = bias_act.activation_funcs[activation].def_gain

        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        bias = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(bias) if bias is not None else None
        else:
            self.register_buffer("weight", weight)
            if bias is not None:
                self.register_buffer("bias", bias)
            else:
                self.bias = None

    def forward(self, x, gain=1):
        """x [N, in_channels, H, W] -> [N, out_channels, H', W']; `gain` scales output and clamp."""
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        # A true convolution is the cheaper form of the transposed convolution used to upsample.
        flip_weight = self.up == 1
        x = conv2d_resample.conv2d_resample(x=x, w=w.to(x.dtype), f=self.resample_filter, up=self.up,
                                            down=self.down, padding=self.padding, flip_weight=flip_weight)
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act.bias_act(x, b, act=self.activation, gain=act_gain, clamp=act_clamp)

    def extra_repr(self):
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, activation={self.activation}, "
                f"up={self.up}, down={self.down}")


# ----------------------------------------------------------------------------
# Mapping network.


@persistence.persistent_class
class MappingNetwork(torch.nn.Module):
    """z [N, z_dim] and c [N, c_dim] -> w [N, w_dim], or ws [N, num_ws, w_dim] when num_ws is set.

    z and the embedded label are each normalised to unit second moment and concatenated, then
    passed through `num_layers` dense layers. In training mode the running mean of w (`w_avg`)
    is updated; truncation pulls w towards it.
    """

    def __init__(
        self,
        z_dim,                  # input latent (z) dimensionality; 0 = no latent
        c_dim,                  # conditioning label (c) dimensionality; 0 = no label
        w_dim,                  # intermediate latent (w) dimensionality
        num_ws,                 # number of ws to broadcast to; None = return a single w [N, w_dim]
        num_layers=8,           # number of dense layers
        embed_features=None,    # label embedding size; None = w_dim
        layer_features=None,    # hidden layer width; None = w_dim
        activation="lrelu",     # activation of the dense layers
        lr_multiplier=0.01,     # learning-rate multiplier of the dense layers
        w_avg_beta=0.995,       # decay of the running mean of w; None = no w_avg (and no truncation)
    ):
        super().__init__()
        if z_dim == 0 and c_dim == 0:
            raise ValueError("MappingNetwork: z_dim and c_dim are both 0; give it a latent or a label input")
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]

        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, skip_w_avg_update=False):
        """z [N, z_dim] (or None if z_dim == 0), c [N, c_dim] -> ws [N, num_ws, w_dim] (or w [N, w_dim]).

        truncation_psi: ws = w_avg + psi * (ws - w_avg), on the first `truncation_cutoff` ws (all if None).
        skip_w_avg_update: leave w_avg unchanged even in training mode (e.g. for style-mixing passes).
        """
        x = self._embed_inputs(z, c)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if self.w_avg_beta is not None and self.training and not skip_w_avg_update:
            self._update_w_avg(x)
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            x = self._truncate(x, truncation_psi, truncation_cutoff)
        return x

    def _embed_inputs(self, z, c):
        """Normalised z [N, z_dim] concatenated with the normalised label embedding -> [N, z_dim + embed]."""
        x = None
        if self.z_dim > 0:
            misc.assert_shape(z, [None, self.z_dim])
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            misc.assert_shape(c, [None, self.c_dim])
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        return x

    def _update_w_avg(self, w):
        """w_avg <- beta * w_avg + (1 - beta) * batch mean of w [N, w_dim]."""
        with torch.no_grad():
            self.w_avg.copy_(w.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

    def _truncate(self, x, psi, cutoff):
        """Move w [N, w_dim] or ws [N, num_ws, w_dim] towards w_avg by factor psi (first `cutoff` ws)."""
        if self.w_avg_beta is None or not hasattr(self, "w_avg"):
            raise ValueError("MappingNetwork: truncation_psi != 1 needs w_avg; build it with num_ws and w_avg_beta set")
        if self.num_ws is None or cutoff is None:
            return self.w_avg.lerp(x, psi)
        x = x.clone()
        x[:, :cutoff] = self.w_avg.lerp(x[:, :cutoff], psi)
        return x

    def extra_repr(self):
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"


# ----------------------------------------------------------------------------
# Synthesis network.


@persistence.persistent_class
class SynthesisLayer(torch.nn.Module):
    """Modulated 3x3 convolution + noise + bias + activation, styled by one w.

    x [N, in_channels, R/up, R/up], w [N, w_dim] -> [N, out_channels, R, R] (R = resolution).
    """

    def __init__(
        self,
        in_channels,                    # number of input channels
        out_channels,                   # number of output channels
        w_dim,                          # intermediate latent (w) dimensionality
        resolution,                     # output resolution R
        kernel_size=3,                  # convolution kernel size
        up=1,                           # integer upsampling factor
        use_noise=True,                 # add per-pixel noise scaled by a learned strength
        activation="lrelu",             # activation name from bias_act.activation_funcs
        resample_filter=[1, 3, 3, 1],   # 1D taps of the upsampling low-pass filter  # noqa: B006
        conv_clamp=None,                # clamp the output to +-conv_clamp (times gain); None = off
        channels_last=False,            # store the weight in channels_last memory format
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        self.act_gain = bias_act.activation_funcs[activation].def_gain

        # The style starts at 1 (bias_init=1) so that an untrained layer passes its input through.
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(resample_filter))
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x, w, noise_mode="random", fused_modconv=True, gain=1):
        """x [N, in_channels, R/up, R/up], w [N, w_dim] -> [N, out_channels, R, R] in x's dtype.

        noise_mode: 'random' (fresh noise each call), 'const' (the stored `noise_const`), 'none'.
        """
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"SynthesisLayer: noise_mode={noise_mode!r}; pass 'random', 'const' or 'none'")
        in_resolution = self.resolution // self.up
        misc.assert_shape(x, [None, self.weight.shape[1], in_resolution, in_resolution])
        styles = self.affine(w)

        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            noise = noise * self.noise_strength
        if self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength

        x = modulated_conv2d(x=x, weight=self.weight, styles=styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1),
                             fused_modconv=fused_modconv)
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act.bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=act_gain, clamp=act_clamp)

    def extra_repr(self):
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, resolution={self.resolution}, "
                f"up={self.up}, activation={self.activation}")


@persistence.persistent_class
class ToRGBLayer(torch.nn.Module):
    """Modulated 1x1 convolution (no demodulation) to image channels: [N, C, R, R] -> [N, img_channels, R, R]."""

    def __init__(
        self,
        in_channels,            # number of input channels
        out_channels,           # number of image channels
        w_dim,                  # intermediate latent (w) dimensionality
        kernel_size=1,          # convolution kernel size
        conv_clamp=None,        # clamp the output to +-conv_clamp; None = off
        channels_last=False,    # store the weight in channels_last memory format
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size**2))

    def forward(self, x, w, fused_modconv=True):
        """x [N, in_channels, R, R], w [N, w_dim] -> [N, out_channels, R, R] in x's dtype."""
        # Without demodulation the equalised-lr gain must be applied explicitly; folding it into the
        # styles is cheapest.
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x=x, weight=self.weight, styles=styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)

    def extra_repr(self):
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"


@persistence.persistent_class
class SynthesisBlock(torch.nn.Module):
    """One resolution of the synthesis network: (x, img) at R/2 -> (x, img) at R.

    The 4x4 block starts from a learned constant. 'orig' and 'resnet' produce an image only in the
    last block; 'skip' adds each block's ToRGB output to the upsampled image of the previous one;
    'resnet' adds a 1x1 upsampling skip connection around the two convolutions.
    """

    def __init__(
        self,
        in_channels,                    # input channels; 0 = this is the 4x4 block (learned constant)
        out_channels,                   # output channels
        w_dim,                          # intermediate latent (w) dimensionality
        resolution,                     # resolution R of this block
        img_channels,                   # number of image channels
        is_last,                        # the last block (always has ToRGB)
        architecture="skip",            # 'orig', 'skip' or 'resnet'
        resample_filter=[1, 3, 3, 1],   # 1D taps of the upsampling low-pass filter  # noqa: B006
        conv_clamp=None,                # clamp convolution outputs to +-conv_clamp; None = off
        use_fp16=False,                 # compute in float16 (on CUDA only)
        fp16_channels_last=False,       # channels_last memory format when in float16
        **layer_kwargs,                 # passed to each SynthesisLayer (use_noise, activation, ...)
    ):
        super().__init__()
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"SynthesisBlock: architecture={architecture!r}; pass 'orig', 'skip' or 'resnet'")
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0
        layer_kwargs = dict(layer_kwargs, conv_clamp=conv_clamp, channels_last=self.channels_last)

        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                    channels_last=self.channels_last)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter, channels_last=self.channels_last)

    def forward(self, x, img, ws, force_fp32=False, fused_modconv=None, **layer_kwargs):
        """x [N, in_channels, R/2, R/2] (None for 4x4), img [N, img_channels, R/2, R/2] or None,
        ws [N, num_conv + num_torgb, w_dim] -> (x [N, out_channels, R, R], img [N, img_channels, R, R] or None).

        fused_modconv: None = fused in eval mode (float32 or batch 1), separate in training mode.
        layer_kwargs: passed to the SynthesisLayers (noise_mode).
        """
        misc.assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim])
        w_iter = iter(ws.unbind(dim=1))
        fp16 = _fp16_active(self.use_fp16, force_fp32, ws.device)
        dtype = torch.float16 if fp16 else torch.float32
        memory_format = torch.channels_last if self.channels_last and fp16 else torch.contiguous_format
        if fused_modconv is None:
            with misc.suppress_tracer_warnings():  # the batch size becomes a constant of a traced graph
                fused_modconv = (not self.training) and (dtype == torch.float32 or int(ws.shape[0]) == 1)

        if self.in_channels == 0:
            x = self.const.to(dtype=dtype, memory_format=memory_format)
            x = x.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        else:
            misc.assert_shape(x, [None, self.in_channels, self.resolution // 2, self.resolution // 2])
            x = x.to(dtype=dtype, memory_format=memory_format)
        x = self._convs(x, w_iter, fused_modconv, layer_kwargs)

        if img is not None:
            misc.assert_shape(img, [None, self.img_channels, self.resolution // 2, self.resolution // 2])
            img = upfirdn2d.upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            img = img + y if img is not None else y
        return x, img

    def _convs(self, x, w_iter, fused_modconv, layer_kwargs):
        """The block's convolutions (and resnet skip): x [N, C_in, R/2, R/2] or const -> [N, C_out, R, R]."""
        if self.in_channels == 0:
            return self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
        if self.architecture == "resnet":
            # sqrt(0.5) on both branches keeps the variance of their sum equal to that of each branch.
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, gain=np.sqrt(0.5), **layer_kwargs)
            return y + x
        x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
        return self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)

    def extra_repr(self):
        return f"resolution={self.resolution}, architecture={self.architecture}, use_fp16={self.use_fp16}"


@persistence.persistent_class
class SynthesisNetwork(torch.nn.Module):
    """ws [N, num_ws, w_dim] -> img [N, img_channels, img_resolution, img_resolution] (float32).

    Blocks `b4`, `b8`, ..., `b<img_resolution>`; channels at resolution R are
    min(channel_base // R, channel_max). Consecutive blocks share one w: the ToRGB of a block uses
    the same w as the first convolution of the next.
    """

    def __init__(
        self,
        w_dim,                  # intermediate latent (w) dimensionality
        img_resolution,         # output resolution (power of two >= 4)
        img_channels,           # number of output image channels
        channel_base=32768,     # overall multiplier for the number of channels
        channel_max=512,        # maximum number of channels in any block
        num_fp16_res=0,         # use float16 (CUDA only) in this many highest resolutions
        **block_kwargs,         # passed to each SynthesisBlock (architecture, conv_clamp, ...)
    ):
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = _check_resolution(img_resolution, "SynthesisNetwork")
        self.img_channels = img_channels
        self.block_resolutions = [2**i for i in range(2, self.img_resolution_log2 + 1)]
        channels_dict = _channels_dict(self.block_resolutions, channel_base, channel_max, "SynthesisNetwork")
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)

        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels_dict[res // 2] if res > 4 else 0
            is_last = res == self.img_resolution
            block = SynthesisBlock(in_channels, channels_dict[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=is_last, use_fp16=(res >= fp16_resolution),
                                   **block_kwargs)
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    def forward(self, ws, **block_kwargs):
        """ws [N, num_ws, w_dim] -> img [N, img_channels, img_resolution, img_resolution] float32.

        block_kwargs: noise_mode ('random' | 'const' | 'none'), force_fp32, fused_modconv.
        """
        misc.assert_shape(ws, [None, self.num_ws, self.w_dim])
        ws = ws.to(torch.float32)
        block_ws = []
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            block_ws.append(ws.narrow(1, w_idx, block.num_conv + block.num_torgb))
            w_idx += block.num_conv

        x = img = None
        for res, cur_ws in zip(self.block_resolutions, block_ws):
            x, img = getattr(self, f"b{res}")(x, img, cur_ws, **block_kwargs)
        return img

    def extra_repr(self):
        return f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}"


@persistence.persistent_class
class Generator(torch.nn.Module):
    """z [N, z_dim], c [N, c_dim] -> img [N, img_channels, img_resolution, img_resolution] (float32, ~[-1, 1])."""

    def __init__(
        self,
        z_dim,                  # input latent (z) dimensionality
        c_dim,                  # conditioning label (c) dimensionality; 0 = unconditional
        w_dim,                  # intermediate latent (w) dimensionality
        img_resolution,         # output resolution (power of two >= 4)
        img_channels,           # number of output image channels
        mapping_kwargs={},      # passed to MappingNetwork  # noqa: B006 (never mutated)
        synthesis_kwargs={},    # passed to SynthesisNetwork  # noqa: B006 (never mutated)
    ):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, **synthesis_kwargs):
        """z [N, z_dim], c [N, c_dim] -> img [N, img_channels, R, R]; synthesis_kwargs: noise_mode, ..."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, **synthesis_kwargs)


# ----------------------------------------------------------------------------
# Discriminator.


@persistence.persistent_class
class DiscriminatorBlock(torch.nn.Module):
    """One resolution of the discriminator: (x, img) at R -> (x, img) at R/2.

    The first block (in_channels == 0), and every block with architecture 'skip', reads the image
    through a 1x1 `fromrgb` layer; 'resnet' adds a 1x1 downsampling skip around the convolutions.
    """

    def __init__(
        self,
        in_channels,                    # input channels; 0 = first block (reads only the image)
        tmp_channels,                   # channels of the intermediate activations
        out_channels,                   # output channels
        resolution,                     # resolution R of this block's input
        img_channels,                   # number of image channels
        first_layer_idx,                # index of this block's first layer in the whole network
        architecture="resnet",          # 'orig', 'skip' or 'resnet'
        activation="lrelu",             # activation name from bias_act.activation_funcs
        resample_filter=[1, 3, 3, 1],   # 1D taps of the downsampling low-pass filter  # noqa: B006
        conv_clamp=None,                # clamp convolution outputs to +-conv_clamp; None = off
        use_fp16=False,                 # compute in float16 (on CUDA only)
        fp16_channels_last=False,       # channels_last memory format when in float16
        freeze_layers=0,                # layers with a global index below this are frozen (Freeze-D)
    ):
        super().__init__()
        if in_channels not in (0, tmp_channels):
            raise ValueError(f"DiscriminatorBlock: in_channels={in_channels}; must be 0 or tmp_channels={tmp_channels}")
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"DiscriminatorBlock: architecture={architecture!r}; pass 'orig', 'skip' or 'resnet'")
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.first_layer_idx = first_layer_idx
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(resample_filter))

        self.num_layers = 0

        def next_trainable():
            # Layers are numbered through the whole network; the first `freeze_layers` stay fixed.
            trainable = first_layer_idx + self.num_layers >= freeze_layers
            self.num_layers += 1
            return trainable

        common = dict(activation=activation, conv_clamp=conv_clamp, channels_last=self.channels_last)
        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, trainable=next_trainable(), **common)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, trainable=next_trainable(), **common)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, down=2, trainable=next_trainable(),
                                 resample_filter=resample_filter, **common)
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                    trainable=next_trainable(), resample_filter=resample_filter,
                                    channels_last=self.channels_last)

    def forward(self, x, img, force_fp32=False):
        """x [N, in_channels, R, R] (None for the first block), img [N, img_channels, R, R] or None
        -> (x [N, out_channels, R/2, R/2], img [N, img_channels, R/2, R/2] for 'skip', else None)."""
        device = x.device if x is not None else img.device
        fp16 = _fp16_active(self.use_fp16, force_fp32, device)
        dtype = torch.float16 if fp16 else torch.float32
        memory_format = torch.channels_last if self.channels_last and fp16 else torch.contiguous_format

        if x is not None:
            misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
            x = x.to(dtype=dtype, memory_format=memory_format)
        if self.in_channels == 0 or self.architecture == "skip":
            misc.assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
            img = img.to(dtype=dtype, memory_format=memory_format)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = upfirdn2d.downsample2d(img, self.resample_filter) if self.architecture == "skip" else None

        if self.architecture == "resnet":
            # sqrt(0.5) on both branches keeps the variance of their sum equal to that of each branch.
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=np.sqrt(0.5))
            x = y + x
        else:
            x = self.conv0(x)
            x = self.conv1(x)
        return x, img

    def extra_repr(self):
        return f"resolution={self.resolution}, architecture={self.architecture}, use_fp16={self.use_fp16}"


@persistence.persistent_class
class MinibatchStdLayer(torch.nn.Module):
    """Append the standard deviation across groups of samples as extra channels: [N, C, H, W] -> [N, C+F, H, W].

    Sample i belongs to group i mod (N / G) (the batch is split as [G, N/G]); each of the
    `num_channels` (F) channel groups gets one statistic: the std over the group, averaged over its
    channels and pixels.
    """

    def __init__(
        self,
        group_size,             # samples per group (G); None = the whole batch; capped at the batch size
        num_channels=1,         # number of statistics channels F to append
    ):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x):
        """x [N, C, H, W] -> [N, C + num_channels, H, W]."""
        N, C, H, W = x.shape
        F = self.num_channels
        with misc.suppress_tracer_warnings():  # sizes may be tensors while tracing; keep them symbolic
            G = torch.min(torch.as_tensor(self.group_size), torch.as_tensor(N)) if self.group_size is not None else N
        if isinstance(N, int) and N % int(G) != 0:
            raise ValueError(f"MinibatchStdLayer: batch size {N} is not a multiple of the group size {int(G)}; "
                             "use a batch size divisible by mbstd_group_size")
        if C % F != 0:
            raise ValueError(f"MinibatchStdLayer: {C} channels do not split into num_channels={F} groups")
        c = C // F

        y = x.reshape(G, -1, F, c, H, W)        # [G, n, F, c, H, W]
        y = y - y.mean(dim=0)                   # deviation from the group mean
        y = y.square().mean(dim=0)              # [n, F, c, H, W] variance over the group
        y = (y + 1e-8).sqrt()                   # std
        y = y.mean(dim=[2, 3, 4])               # [n, F] average over channels and pixels
        y = y.reshape(-1, F, 1, 1)
        y = y.repeat(G, 1, H, W)                # [N, F, H, W] back to every sample of the group
        return torch.cat([x, y], dim=1)

    def extra_repr(self):
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


@persistence.persistent_class
class DiscriminatorEpilogue(torch.nn.Module):
    """The 4x4 head of the discriminator: x [N, C, 4, 4] -> logits [N, 1] (always float32).

    minibatch-std -> 3x3 conv -> fc (C*16 -> C) -> out (C -> 1, or C -> cmap_dim followed by the
    projection onto the label embedding cmap, scaled by 1/sqrt(cmap_dim)).
    """

    def __init__(
        self,
        in_channels,                # number of input channels C
        cmap_dim,                   # label-embedding size for the projection; 0 = unconditional
        resolution,                 # resolution of the input (4)
        img_channels,               # number of image channels
        architecture="resnet",      # 'orig', 'skip' or 'resnet'
        mbstd_group_size=4,         # group size of minibatch-std; None = whole batch
        mbstd_num_channels=1,       # statistics channels of minibatch-std; 0 = no minibatch-std
        activation="lrelu",         # activation name from bias_act.activation_funcs
        conv_clamp=None,            # clamp the conv output to +-conv_clamp; None = off
    ):
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture

        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * (resolution**2), in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x, img, cmap, force_fp32=False, return_features=False):
        """x [N, C, 4, 4], img [N, img_channels, 4, 4] ('skip') or None, cmap [N, cmap_dim] or None
        -> logits [N, 1]; with return_features, (logits, {'b4_input': [N, C, 4, 4], 'fc': [N, C]})."""
        del force_fp32  # the epilogue always computes in float32
        misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
        x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        feats = {"b4_input": x}
        if self.architecture == "skip":
            misc.assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
            img = img.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            x = x + self.fromrgb(img)

        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        feats["fc"] = x
        x = self.out(x)

        if self.cmap_dim > 0:
            misc.assert_shape(cmap, [None, self.cmap_dim])
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / np.sqrt(self.cmap_dim))
        return (x, feats) if return_features else x

    def extra_repr(self):
        return f"in_channels={self.in_channels}, cmap_dim={self.cmap_dim}, architecture={self.architecture}"


@persistence.persistent_class
class Discriminator(torch.nn.Module):
    """img [N, img_channels, R, R], c [N, c_dim] -> logits [N, 1] (float32).

    Blocks `b<R>`, ..., `b8` halve the resolution; `b4` is the epilogue. A conditional D embeds c
    with a MappingNetwork (`mapping`, no latent input) and projects the epilogue output onto it.
    """

    def __init__(
        self,
        c_dim,                  # conditioning label (c) dimensionality; 0 = unconditional
        img_resolution,         # input resolution (power of two >= 4)
        img_channels,           # number of input image channels
        architecture="resnet",  # 'orig', 'skip' or 'resnet'
        channel_base=32768,     # overall multiplier for the number of channels
        channel_max=512,        # maximum number of channels in any block
        num_fp16_res=0,         # use float16 (CUDA only) in this many highest resolutions
        conv_clamp=None,        # clamp convolution outputs to +-conv_clamp; None = off
        cmap_dim=None,          # label-embedding size; None = channels at 4x4
        block_kwargs={},        # passed to each DiscriminatorBlock (freeze_layers, ...)  # noqa: B006
        mapping_kwargs={},      # passed to the label MappingNetwork  # noqa: B006 (never mutated)
        epilogue_kwargs={},     # passed to DiscriminatorEpilogue (mbstd_group_size, ...)  # noqa: B006
    ):
        super().__init__()
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = _check_resolution(img_resolution, "Discriminator")
        if img_resolution < 8:
            raise ValueError(f"Discriminator: img_resolution={img_resolution}; the discriminator needs at least one "
                             "block before its 4x4 epilogue, so pass img_resolution >= 8")
        self.img_channels = img_channels
        self.block_resolutions = [2**i for i in range(self.img_resolution_log2, 2, -1)]
        channels_dict = _channels_dict(self.block_resolutions + [4], channel_base, channel_max, "Discriminator")
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        if cmap_dim is None:
            cmap_dim = channels_dict[4]
        if c_dim == 0:
            cmap_dim = 0

        common_kwargs = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        cur_layer_idx = 0
        for res in self.block_resolutions:
            in_channels = channels_dict[res] if res < img_resolution else 0
            block = DiscriminatorBlock(in_channels, channels_dict[res], channels_dict[res // 2], resolution=res,
                                       first_layer_idx=cur_layer_idx, use_fp16=(res >= fp16_resolution),
                                       **block_kwargs, **common_kwargs)
            setattr(self, f"b{res}", block)
            cur_layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **mapping_kwargs)
        self.b4 = DiscriminatorEpilogue(channels_dict[4], cmap_dim=cmap_dim, resolution=4, **epilogue_kwargs,
                                        **common_kwargs)

    def forward(self, img, c, return_features=False, **block_kwargs):
        """img [N, img_channels, R, R], c [N, c_dim] -> logits [N, 1] float32.

        return_features=True returns (logits, feats) instead, with the same logits and
        feats['b4_input'] [N, C4, 4, 4]: the activations entering the 4x4 epilogue (output of b8,
            in float32, before the skip-architecture fromrgb and before minibatch-std);
        feats['fc'] [N, C4]: the epilogue's fully connected layer output (after its activation),
            before the `out` layer and the label projection.
        Both keep their autograd graph. block_kwargs: force_fp32.
        """
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img, **block_kwargs)
        cmap = None
        if self.c_dim > 0:
            cmap = self.mapping(None, c)
        return self.b4(x, img, cmap, return_features=return_features)

    def extra_repr(self):
        return f"c_dim={self.c_dim}, img_resolution={self.img_resolution}, img_channels={self.img_channels}"
