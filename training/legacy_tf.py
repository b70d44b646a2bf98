"""Convert TF-era StyleGAN2 / StyleGAN2-ADA network pickles into `training.networks` modules, without TensorFlow.

A TF-era pickle is a tuple (G, D, Gs) of `dnnlib.tflib.network.Network` objects. Each pickles its
state as a dict with (among others) 'name', 'static_kwargs' (the constructor kwargs of the build
function), 'components' (sub-networks, e.g. G's 'mapping' and 'synthesis') and 'variables' (a list
of (relative TF variable name, numpy array)). `TFNetworkStub` captures that state; the converters
below rebuild our Generator / Discriminator from the kwargs and the variable shapes and copy every
variable in, with the layout changes between the two frameworks:

- conv weights: TF [kh, kw, in, out] -> ours [out, in, kh, kw]; the generator's upsampling convs
  (Conv0_up, Skip) ran as transposed convolutions in TF, so their kernels are also flipped;
- dense weights: TF [in, out] -> ours [out, in];
- modulation biases: TF adds 1 at run time, ours stores it (bias + 1);
- noise inputs 'noise{i}' [1, 1, R, R] -> noise_const [R, R]; const [1, C, 4, 4] -> [C, 4, 4];
- 'dlatent_avg' -> mapping.w_avg.

TF variables with no place in our network are returned as a report (the caller warns); a network
parameter with no TF variable, or a variable of the wrong shape, is an error naming the variable.
"""

import re

import numpy as np
import torch

import dnnlib
from training import networks

# ----------------------------------------------------------------------------
# Unpickling.


class TFNetworkStub:
    """Stands in for `dnnlib.tflib.network.Network`: keeps the pickled state dict as `self.state`."""

    def __setstate__(self, state):
        self.state = dict(state)

    @property
    def name(self) -> str:
        return self.state.get("name", "?")

    @property
    def static_kwargs(self) -> dict:
        return dict(self.state.get("static_kwargs") or {})

    @property
    def components(self) -> dict:
        return dict(self.state.get("components") or {})


class TFObjectStub:
    """Stands in for any other `dnnlib.tflib` class a TF-era pickle may mention; its state is kept, unused."""

    def __setstate__(self, state):
        self.state = state


def find_tf_class(module: str, name: str):
    """The stub class for a `dnnlib.tflib.*` class name, or None for any other module."""
    if module != "dnnlib.tflib" and not module.startswith("dnnlib.tflib."):
        return None
    return TFNetworkStub if name == "Network" else TFObjectStub


def is_tf_pickle(data) -> bool:
    """True for the (G, D, Gs) tuple of TF networks that TF-era StyleGAN2(-ADA) pickles hold."""
    return isinstance(data, tuple) and len(data) == 3 and all(isinstance(net, TFNetworkStub) for net in data)


def collect_tf_params(net: TFNetworkStub, prefix: str = "") -> dict:
    """{'component/.../var': np.ndarray} for the network and, recursively, its components."""
    params = {}
    for name, value in net.state.get("variables", []):
        params[prefix + name] = np.asarray(value)
    for comp_name, comp in net.components.items():
        if isinstance(comp, TFNetworkStub):
            params.update(collect_tf_params(comp, prefix=f"{prefix}{comp_name}/"))
    return params


def _all_static_kwargs(net: TFNetworkStub) -> dict:
    """Static kwargs of the network, completed by those of its components (outer values win)."""
    kwargs = {}
    for comp in net.components.values():
        if isinstance(comp, TFNetworkStub):
            kwargs.update(comp.static_kwargs)
    kwargs.update(net.static_kwargs)
    return kwargs


class ConversionError(ValueError):
    """A TF-era network that cannot be expressed with training.networks; the message names the variable."""


# ----------------------------------------------------------------------------
# Static kwargs.

# Kwargs of the TF build functions that do not change the converted weights or architecture.
_IGNORED_KWARGS = {
    "truncation_psi", "truncation_cutoff", "truncation_psi_val", "truncation_cutoff_val", "style_mixing_prob",
    "is_training", "is_validation", "is_template_graph", "return_dlatents", "mapping_func", "synthesis_func",
    "randomize_noise", "dtype", "fused_modconv", "structure", "conditioning", "dlatent_broadcast", "components",
    "func_name", "augment_func", "lod_in",
}


class _Kwargs:
    """Reads static kwargs with defaults and remembers which ones were understood."""

    def __init__(self, static_kwargs: dict, who: str):
        self.static = dict(static_kwargs)
        self.who = who
        self.used = set(_IGNORED_KWARGS)

    def get(self, name, default=None, none=None):
        self.used.add(name)
        value = self.static.get(name, default)
        return none if value is None and none is not None else value

    def unknown(self) -> list:
        return [f"{self.who} static kwarg {name}={self.static[name]!r}" for name in sorted(self.static)
                if name not in self.used]


def _resolutions(tf_params: dict, prefix: str = "") -> list:
    """Sorted resolutions R for which some variable lives under '{prefix}{R}x{R}/'."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)x\1/")
    return sorted({int(m.group(1)) for name in tf_params for m in [pattern.match(name)] if m})


def _block_channel_settings(kw, tf_params, resolutions, prefix, conv_name, who):
    """(channel_base, channel_max) from each block's output width: '<prefix>4x4/Conv' and '<prefix>RxR/<conv_name>'."""
    channels = {4: _require(tf_params, f"{prefix}4x4/Conv/weight", who).shape[-1]}
    for res in resolutions:
        if res > 4:
            channels[res] = _require(tf_params, f"{prefix}{res}x{res}/{conv_name}/weight", who).shape[-1]
    static_base = kw.get("fmap_base", 16384)
    return _channel_settings(channels, None if static_base is None else 2 * static_base, kw.get("fmap_max", 512), who)


def _channel_settings(channels: dict, base, cmax, who: str):
    """(channel_base, channel_max) reproducing {R: channels}; prefer the static values when they do."""
    def fits(b, m):
        return all(min(b // res, m) == ch for res, ch in channels.items())
    if base is not None and cmax is not None and fits(base, cmax):
        return base, cmax
    cmax = max(channels.values())
    below = [res * ch for res, ch in sorted(channels.items()) if ch < cmax]
    base = below[0] if below else cmax * max(channels)
    if not fits(base, cmax):
        raise ConversionError(f"TF-era {who}: channel counts {channels} do not follow min(base / R, max); "
                              "this network cannot be expressed with training.networks")
    return base, cmax


def _require(tf_params: dict, name: str, who: str) -> np.ndarray:
    if name not in tf_params:
        raise ConversionError(f"TF-era {who}: variable '{name}' is missing; the pickle is not a StyleGAN2(-ADA) "
                              "network or uses a variant this converter does not know")
    return tf_params[name]


# ----------------------------------------------------------------------------
# Variable placement.


def _same(a):
    return a


def _dense(a):
    return a.T  # TF [in, out] -> ours [out, in]


def _conv(a):
    return a.transpose(3, 2, 0, 1)  # TF [kh, kw, in, out] -> ours [out, in, kh, kw]


def _conv_flipped(a):
    # TF ran these as transposed convolutions; ours runs a true convolution, so the kernel is mirrored.
    return a[::-1, ::-1].transpose(3, 2, 0, 1)


def _plus_one(a):
    return a + 1  # TF adds 1 to the modulation bias at run time; ours stores it


def _first(a):
    return a[0]  # const [1, C, 4, 4] -> [C, 4, 4]


def _noise(a):
    return a[0, 0]  # noise input [1, 1, R, R] -> [R, R]


_G_LAYERS = {"conv0": "Conv0_up", "conv1": "Conv1", "torgb": "ToRGB", "skip": "Skip"}
_G_FIELDS = {"weight": ("weight", None), "bias": ("bias", _same), "noise_strength": ("noise_strength", _same),
             "affine.weight": ("mod_weight", _dense), "affine.bias": ("mod_bias", _plus_one)}


def _generator_source(name: str):
    """(TF variable, transform) that feeds our Generator tensor `name`; None for derived buffers."""
    if name.endswith("resample_filter"):
        return None
    if name == "mapping.w_avg":
        return "dlatent_avg", _same
    m = re.fullmatch(r"mapping\.(embed|fc(\d+))\.(weight|bias)", name)
    if m:
        scope = "LabelEmbed" if m[1] == "embed" else f"Dense{m[2]}"
        return f"mapping/{scope}/{m[3]}", (_dense if m[3] == "weight" else _same)
    m = re.fullmatch(r"synthesis\.b(\d+)\.(const|(conv0|conv1|torgb|skip)\.(.+))", name)
    if not m or (m[2] != "const" and m[4] not in _G_FIELDS and m[4] != "noise_const"):
        raise ConversionError(f"TF-era G: no TF variable is known for parameter '{name}' of training.networks")
    res = int(m[1])
    scope = f"synthesis/{res}x{res}"
    if m[2] == "const":
        return f"{scope}/Const/const", _first
    layer, field = m[3], m[4]
    if field == "noise_const":
        # TF numbers the noise inputs over the whole network: 4x4 conv = 0, then two per resolution.
        return f"synthesis/noise{2 * int(np.log2(res)) - (5 if layer == 'conv0' else 4)}", _noise
    tf_layer = "Conv" if (res == 4 and layer == "conv1") else _G_LAYERS[layer]
    tf_field, transform = _G_FIELDS[field]
    if transform is None:
        transform = _conv_flipped if layer in ("conv0", "skip") else _conv
    return f"{scope}/{tf_layer}/{tf_field}", transform


_D_LAYERS = {"fromrgb": "FromRGB", "conv0": "Conv0", "conv1": "Conv1_down", "skip": "Skip", "conv": "Conv",
             "fc": "Dense0"}


def _discriminator_source(name: str):
    """(TF variable, transform) that feeds our Discriminator tensor `name`; None for derived buffers."""
    if name.endswith("resample_filter"):
        return None
    m = re.fullmatch(r"mapping\.(embed|fc(\d+))\.(weight|bias)", name)
    if m:
        scope = "LabelEmbed" if m[1] == "embed" else f"Mapping{m[2]}"
        return f"{scope}/{m[3]}", (_dense if m[3] == "weight" else _same)
    m = re.fullmatch(r"b(\d+)\.(fromrgb|conv0|conv1|skip|conv|fc|out)\.(weight|bias)", name)
    if not m:
        raise ConversionError(f"TF-era D: no TF variable is known for parameter '{name}' of training.networks")
    res, layer, field = int(m[1]), m[2], m[3]
    if layer == "out":
        return f"Output/{field}", (_dense if field == "weight" else _same)
    transform = _same if field == "bias" else (_dense if layer == "fc" else _conv)
    return f"{res}x{res}/{_D_LAYERS[layer]}/{field}", transform


def _populate(module: torch.nn.Module, tf_params: dict, source_fn, who: str) -> set:
    """Copy every TF variable into `module`; return the names of the variables used."""
    used = set()
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        source = source_fn(name)
        if source is None:
            continue
        tf_name, transform = source
        raw = _require(tf_params, tf_name, who)
        value = np.array(transform(np.asarray(raw, dtype=np.float32)), order="C")  # keeps 0-d shapes
        if value.shape != tuple(tensor.shape):
            raise ConversionError(f"TF-era {who}: variable '{tf_name}' has shape {tuple(np.shape(raw))}, which does "
                                  f"not fit {name} {tuple(tensor.shape)}; the file is damaged or not a consistent "
                                  "StyleGAN2(-ADA) network")
        with torch.no_grad():
            tensor.copy_(torch.from_numpy(value))
        used.add(tf_name)
    return used


# ----------------------------------------------------------------------------
# Generator.


def _rename_lod_torgb(tf_params: dict, img_resolution: int) -> dict:
    """Progressive ('orig') TF synthesis networks have 'ToRGB_lod{n}' layers (n = log2(R_max / R)); only the
    final one (lod0) is used at full resolution: it becomes '{R}x{R}/ToRGB', the others stay (reported unused)."""
    return {f"synthesis/{img_resolution}x{img_resolution}/ToRGB/{name.rsplit('/', 1)[1]}"
            if re.fullmatch(r"synthesis/ToRGB_lod0/[^/]+", name) else name: value
            for name, value in tf_params.items()}


def _generator_architecture(tf_params: dict) -> str:
    """From variable names (after _rename_lod_torgb): lod ToRGB layers mean a progressive 'orig' network."""
    if any(name.startswith("synthesis/ToRGB_lod") for name in tf_params):
        return "orig"
    if any(re.fullmatch(r"synthesis/\d+x\d+/Skip/weight", name) for name in tf_params):
        return "resnet"
    return "skip" if "synthesis/4x4/ToRGB/weight" in tf_params else "orig"


def _mapping_kwargs(kw: _Kwargs, tf_params: dict, who: str):
    """(z_dim, c_dim, w_dim, mapping_kwargs) of a TF G_mapping, from static kwargs and shapes."""
    if any(name.startswith("mapping/LabelConcat/") for name in tf_params):
        raise ConversionError(f"TF-era {who}: the StyleGAN2 (pre-ADA) label input 'mapping/LabelConcat' normalises "
                              "z and the label jointly, which training.networks.MappingNetwork cannot express")
    if kw.get("normalize_latents", True) is False:
        raise ConversionError(f"TF-era {who}: normalize_latents=False is not supported by training.networks")
    num_layers = kw.get("mapping_layers", sum(1 for n in tf_params if re.fullmatch(r"mapping/Dense\d+/weight", n)))
    dense0 = _require(tf_params, "mapping/Dense0/weight", who)
    last = _require(tf_params, f"mapping/Dense{num_layers - 1}/weight", who)
    embed = tf_params.get("mapping/LabelEmbed/weight")
    c_dim = kw.get("label_size", 0 if embed is None else embed.shape[0])
    embed_features = kw.get("label_fmaps", None if embed is None else embed.shape[1])
    if c_dim > 0 and embed is None:
        _require(tf_params, "mapping/LabelEmbed/weight", who)
    z_dim = kw.get("latent_size", dense0.shape[0] - (embed.shape[1] if c_dim > 0 else 0))
    w_dim = kw.get("dlatent_size", last.shape[1])
    mapping_kwargs = dnnlib.EasyDict(
        num_layers=num_layers,
        embed_features=embed_features,
        layer_features=kw.get("mapping_fmaps", dense0.shape[1] if num_layers > 1 else None),
        activation=kw.get("mapping_nonlinearity", "lrelu"),
        lr_multiplier=kw.get("mapping_lrmul", 0.01),
        w_avg_beta=kw.get("dlatent_avg_beta", kw.get("w_avg_beta", 0.995), none=1),
    )
    return int(z_dim), int(c_dim), int(w_dim), mapping_kwargs


def generator_kwargs(tf_G: TFNetworkStub, tf_params: dict, who: str = "G"):
    """(Generator kwargs, tf_params with aliases resolved, list of unknown static kwargs)."""
    kw = _Kwargs(_all_static_kwargs(tf_G), who)
    if kw.get("fmap_decay", 1.0) != 1.0:
        raise ConversionError(f"TF-era {who}: fmap_decay={kw.static['fmap_decay']} is not supported "
                              "(training.networks halves the channels per resolution)")
    kw.get("fmap_min")  # checked through the channel counts below
    resolutions = _resolutions(tf_params, "synthesis/")
    img_resolution = int(kw.get("resolution", resolutions[-1] if resolutions else 0))
    tf_params = _rename_lod_torgb(tf_params, img_resolution)
    z_dim, c_dim, w_dim, mapping_kwargs = _mapping_kwargs(kw, tf_params, who)
    torgb = _require(tf_params, f"synthesis/{img_resolution}x{img_resolution}/ToRGB/weight", who)
    channel_base, channel_max = _block_channel_settings(kw, tf_params, resolutions, "synthesis/", "Conv1", who)
    synthesis_kwargs = dnnlib.EasyDict(
        channel_base=channel_base,
        channel_max=channel_max,
        num_fp16_res=kw.get("num_fp16_res", 0),
        conv_clamp=kw.get("conv_clamp", None),
        architecture=kw.get("architecture", _generator_architecture(tf_params)),
        resample_filter=list(kw.get("resample_kernel", [1, 3, 3, 1])),
        use_noise=kw.get("use_noise", "synthesis/noise0" in tf_params),
        activation=kw.get("nonlinearity", "lrelu"),
    )
    kwargs = dnnlib.EasyDict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                             img_channels=int(kw.get("num_channels", torgb.shape[-1])),
                             mapping_kwargs=mapping_kwargs, synthesis_kwargs=synthesis_kwargs)
    return kwargs, tf_params, kw.unknown()


def convert_generator(tf_G: TFNetworkStub, who: str = "G"):
    """TF G_main network -> (networks.Generator in eval mode, list of report lines for unused items)."""
    kwargs, tf_params, report = generator_kwargs(tf_G, collect_tf_params(tf_G), who)
    return _build_and_fill(networks.Generator, kwargs, tf_params, _generator_source, report, who)


def _build_and_fill(cls, kwargs, tf_params, source_fn, report, who):
    """(cls(**kwargs) holding the TF variables, in eval mode; report + the unused variables)."""
    try:
        net = cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConversionError(f"TF-era {who}: cannot build training.networks.{cls.__name__} from {dict(kwargs)}: {e}")
    used = _populate(net, tf_params, source_fn, who)
    return net.eval().requires_grad_(False), report + _unused(tf_params, used, who)


# TF variables that hold no weights of the converted network: G_main's progressive-growing level of detail.
_IGNORED_VARIABLES = {"lod"}


def _unused(tf_params: dict, used: set, who: str) -> list:
    return [f"{who} variable '{name}' {tuple(np.shape(value))} has no place in training.networks; ignored"
            for name, value in tf_params.items() if name not in used and name not in _IGNORED_VARIABLES]


# ----------------------------------------------------------------------------
# Discriminator.


def _discriminator_architecture(tf_params: dict) -> str:
    if any(re.fullmatch(r"\d+x\d+/Skip/weight", name) for name in tf_params):
        return "resnet"
    return "skip" if "4x4/FromRGB/weight" in tf_params else "orig"


def _d_mapping_kwargs(kw: _Kwargs, tf_params: dict, who: str):
    """(c_dim, cmap_dim, mapping_kwargs) of a TF D's label embedding, from static kwargs and shapes."""
    embed = tf_params.get("LabelEmbed/weight")
    c_dim = int(kw.get("label_size", 0 if embed is None else embed.shape[0]))
    if c_dim > 0 and embed is None:
        raise ConversionError(f"TF-era {who}: a conditional D without 'LabelEmbed' (StyleGAN2's label-selected "
                              "outputs) cannot be expressed with training.networks.Discriminator")
    num_layers = kw.get("mapping_layers", sum(1 for n in tf_params if re.fullmatch(r"Mapping\d+/weight", n)))
    fmaps = kw.get("mapping_fmaps", None)
    mapping_kwargs = dnnlib.EasyDict(
        num_layers=num_layers,
        embed_features=fmaps if embed is None else embed.shape[1],
        layer_features=fmaps if num_layers == 0 else _require(tf_params, "Mapping0/weight", who).shape[1],
        activation=kw.get("nonlinearity", "lrelu"),
        lr_multiplier=kw.get("mapping_lrmul", 0.1),
    )
    cmap_dim = int(_require(tf_params, "Output/weight", who).shape[1]) if c_dim > 0 else None
    return c_dim, cmap_dim, mapping_kwargs


def discriminator_kwargs(tf_D: TFNetworkStub, tf_params: dict, who: str = "D"):
    """(Discriminator kwargs, list of unknown static kwargs)."""
    kw = _Kwargs(_all_static_kwargs(tf_D), who)
    if kw.get("fmap_decay", 1.0) != 1.0:
        raise ConversionError(f"TF-era {who}: fmap_decay={kw.static['fmap_decay']} is not supported")
    kw.get("fmap_min")
    resolutions = _resolutions(tf_params)
    img_resolution = int(kw.get("resolution", resolutions[-1] if resolutions else 0))
    fromrgb = _require(tf_params, f"{img_resolution}x{img_resolution}/FromRGB/weight", who)
    channel_base, channel_max = _block_channel_settings(kw, tf_params, resolutions, "", "Conv0", who)
    c_dim, cmap_dim, mapping_kwargs = _d_mapping_kwargs(kw, tf_params, who)
    # TF skips minibatch-std for group sizes <= 1; the 4x4 conv's input channels tell how many it appends.
    group_size = kw.get("mbstd_group_size", 4)
    conv4_shape = _require(tf_params, "4x4/Conv/weight", who).shape  # [kh, kw, in = C4 + mbstd features, out = C4]
    num_features = conv4_shape[2] - conv4_shape[3]
    num_features = kw.get("mbstd_num_features", num_features) if group_size is None or group_size > 1 else 0
    activation = kw.get("nonlinearity", "lrelu")
    kwargs = dnnlib.EasyDict(
        c_dim=c_dim,
        img_resolution=img_resolution,
        img_channels=int(kw.get("num_channels", fromrgb.shape[2])),
        architecture=kw.get("architecture", _discriminator_architecture(tf_params)),
        channel_base=channel_base,
        channel_max=channel_max,
        num_fp16_res=kw.get("num_fp16_res", 0),
        conv_clamp=kw.get("conv_clamp", None),
        cmap_dim=cmap_dim,
        block_kwargs=dnnlib.EasyDict(activation=activation, freeze_layers=kw.get("freeze_layers", 0),
                                     resample_filter=list(kw.get("resample_kernel", [1, 3, 3, 1]))),
        mapping_kwargs=mapping_kwargs,
        epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=group_size, mbstd_num_channels=int(num_features),
                                        activation=activation),
    )
    return kwargs, kw.unknown()


def convert_discriminator(tf_D: TFNetworkStub, who: str = "D"):
    """TF D network -> (networks.Discriminator in eval mode, list of report lines for unused items)."""
    tf_params = collect_tf_params(tf_D)
    kwargs, report = discriminator_kwargs(tf_D, tf_params, who)
    return _build_and_fill(networks.Discriminator, kwargs, tf_params, _discriminator_source, report, who)


def convert_tf_pickle(data: tuple):
    """(G, D, Gs) TF networks -> ({'G', 'D', 'G_ema', 'augment_pipe': None, 'training_set_kwargs': None}, report).

    `report` lists TF variables and static kwargs that were not used (the caller warns about them).
    Raises ConversionError naming the variable when a network cannot be converted.
    """
    tf_G, tf_D, tf_Gs = data
    G, report_G = convert_generator(tf_G, "G")
    D, report_D = convert_discriminator(tf_D, "D")
    G_ema, report_Gs = convert_generator(tf_Gs, "Gs")
    result = dict(G=G, D=D, G_ema=G_ema, augment_pipe=None, training_set_kwargs=None)
    return result, report_G + report_D + report_Gs
