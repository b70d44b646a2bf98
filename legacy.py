"""Load network pickles: ours, official StyleGAN2-ADA-PyTorch ones, and TF-era StyleGAN2/ADA ones.

Security note: a network pickle is code. Loading one runs the Python source embedded in it
(see torch_utils/persistence.py), so only load pickles from sources you trust. TF-era pickles
are read without TensorFlow: their networks become stubs holding the pickled state, which
training/legacy_tf.py converts into training.networks modules.
"""

import os
import pickle
import warnings

import click

import dnnlib
from torch_utils import misc
from training import legacy_tf

NETWORK_KEYS = ("G", "D", "G_ema")


class NetworkPickleError(IOError):
    """A file that cannot be read as a network pickle; the message names the file and the fix."""


class _LegacyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        stub = legacy_tf.find_tf_class(module, name)
        return stub if stub is not None else super().find_class(module, name)


def _describe(f) -> str:
    return getattr(f, "name", None) or "<network pickle stream>"


def _unpickle(f):
    """Unpickle `f`, turning the ways a damaged or foreign file fails into one clear error."""
    where = _describe(f)
    try:
        return _LegacyUnpickler(f).load()
    except (EOFError, pickle.UnpicklingError) as e:
        raise NetworkPickleError(
            f"{where}: not a readable network pickle ({type(e).__name__}: {e}); "
            f"the file is truncated or of another format: download it again or pass the right file"
        ) from None
    except (ModuleNotFoundError, AttributeError) as e:
        raise NetworkPickleError(
            f"{where}: the pickle refers to code that is not available here ({e}); "
            f"it was not written by StyleGAN2-ADA or this project"
        ) from None


def load_network_pkl(f, force_fp16: bool = False) -> dict:
    """Read a network pickle into a dict with `G`, `D`, `G_ema`, `augment_pipe`, `training_set_kwargs`.

    Args:
        f: a binary file object (e.g. from `dnnlib.util.open_url`).
        force_fp16: rebuild G, D and G_ema with 4 fp16 resolutions and conv_clamp=256 (as
            StyleGAN2-ADA's own fp16 settings), copying the weights over.
    TF-era (G, D, Gs) pickles are converted (Gs becomes G_ema); TF variables and settings that have
    no place in training.networks are reported with `warnings.warn` (category TFConversionWarning).
    Returns:
        dict; missing optional entries (`augment_pipe`, `training_set_kwargs`, `D`) are None.
    """
    where = _describe(f)
    data = _unpickle(f)
    if legacy_tf.is_tf_pickle(data):
        data = _convert_tf(data, where)
    if not isinstance(data, dict) or "G_ema" not in data:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise NetworkPickleError(
            f"{where}: not a StyleGAN2-ADA network pickle (expected a dict with {', '.join(NETWORK_KEYS)}, "
            f"found {found}); pass a network-snapshot-*.pkl file"
        )
    data = dict(data)
    for key in ("G", "D", "augment_pipe", "training_set_kwargs"):
        data.setdefault(key, None)
    if force_fp16:
        for key in NETWORK_KEYS:
            if data[key] is not None:
                data[key] = _rebuild_with_fp16(data[key], is_generator=(key != "D"))
    return data


class TFConversionWarning(UserWarning):
    """Parts of a TF-era pickle that the conversion did not use."""


def _convert_tf(data, where: str) -> dict:
    try:
        converted, report = legacy_tf.convert_tf_pickle(data)
    except legacy_tf.ConversionError as e:
        raise NetworkPickleError(f"{where}: {e}") from None
    if report:
        warnings.warn(f"{where}: TF-era pickle: {len(report)} item(s) not used by the conversion: "
                      f"{'; '.join(report)}", TFConversionWarning, stacklevel=3)
    return converted


def _rebuild_with_fp16(net, is_generator: bool):
    """Re-construct a persistent network from its init kwargs with fp16 enabled, keeping its weights."""
    if not hasattr(net, "init_kwargs"):
        raise NetworkPickleError(
            f"cannot force fp16 on {type(net).__name__}: it does not record its constructor arguments"
        )
    kwargs = dnnlib.EasyDict(net.init_kwargs)
    target = kwargs
    if is_generator:
        kwargs.synthesis_kwargs = target = dnnlib.EasyDict(kwargs.get("synthesis_kwargs", {}))
    if target.get("num_fp16_res", 0) == 4 and target.get("conv_clamp") == 256:
        return net
    target.num_fp16_res = 4
    target.conv_clamp = 256
    new_net = type(net)(*net.init_args, **kwargs).eval().requires_grad_(False)
    misc.copy_params_and_buffers(net, new_net, require_all=True)
    return new_net


def save_network_pkl(data: dict, path: str) -> None:
    """Write a network dict as a pickle, atomically (temp file, fsync, rename)."""
    dnnlib.util.atomic_write(path, lambda f: pickle.dump(data, f))


def pretrained_urls() -> dict:
    """{short name: URL} of the official StyleGAN2-ADA pickles (ffhq256, ..., the names train.py --resume takes)."""
    from training.train_options import RESUME_URLS  # imported here: generate.py needs nothing else from it
    return dict(RESUME_URLS)


def resolve_network(name_or_path: str) -> str:
    """A pretrained short name (e.g. 'ffhq256') -> its official URL; any other path or URL unchanged.

    An existing local file of that name wins over the short name.
    """
    from training.train_options import pretrained_url  # imported here, as in pretrained_urls
    return pretrained_url(name_or_path) or name_or_path


def load_network_pkl_from(url_or_path: str, force_fp16: bool = False) -> dict:
    """`load_network_pkl` on a local path, URL (downloaded once into the dnnlib cache) or short name.

    Short names (see `pretrained_urls`) resolve to the official URLs; offline, the DownloadError
    names the URL and the cache file to copy it to.
    """
    with dnnlib.util.open_url(resolve_network(url_or_path)) as f:
        return load_network_pkl(f, force_fp16=force_fp16)


@click.command()
@click.option("--source", help="Input pickle: path, URL or pretrained short name (ffhq256, ...)", required=True,
              metavar="PATH")
@click.option("--dest", help="Output pickle", required=True, metavar="PATH")
@click.option("--force-fp16", help="Rebuild the networks with fp16 layers", type=bool, default=False,
              show_default=True)
def convert_network_pickle(source, dest, force_fp16):
    """Re-save a network pickle (ours, official PyTorch or TF-era StyleGAN2/ADA) in this project's format.

    \b
    python legacy.py --source=network-snapshot-000100.pkl --dest=converted.pkl
    python legacy.py --source=stylegan2-ffhq-config-f.pkl --dest=stylegan2-ffhq-config-f-pt.pkl
    """
    dest_dir = os.path.dirname(os.path.abspath(dest))
    if os.path.isdir(dest) or not os.path.isdir(dest_dir):
        raise click.BadParameter(f"{dest} is a folder or its folder does not exist; pass a file path in an existing "
                                 "folder", param_hint="'--dest'")
    if os.path.exists(source) and os.path.exists(dest) and os.path.samefile(source, dest):
        raise click.BadParameter(f"{dest} is the --source file; write the conversion to a new file",
                                 param_hint="'--dest'")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TFConversionWarning)
        try:
            data = load_network_pkl_from(source, force_fp16=force_fp16)
        except (OSError, NetworkPickleError) as e:
            raise click.ClickException(str(e))
    for warning in caught:
        click.echo(f"warning: {warning.message}", err=True)
    try:
        save_network_pkl(data, dest)
    except OSError as e:
        raise click.ClickException(f"{dest}: cannot write ({e.strerror or e}); choose another --dest") from None
    click.echo(f"Wrote {dest}")


if __name__ == "__main__":
    convert_network_pickle()  # pylint: disable=no-value-parameter
