"""Shared machinery of the metrics: options, feature extraction for reals and fakes, the real-stats cache.

Work is split across processes by batch: the items 0..n-1 are cut into batches of `batch_size`
and rank r handles batches r, r + W, r + 2W, ... (W = num_gpus). Every rank then holds the same
gathered result in the original order, so a metric does not depend on the number of processes.
Fakes are seeded per batch from `opts.seed`, which makes them reproducible as well.

Real-image statistics are cached under `<dnnlib cache>/gan-metrics/`, keyed by a hash of the
dataset's file CONTENTS (so editing one image invalidates them), the detector file's hash and the
options that shape the statistics; the file is written atomically (temp name, then rename).
"""

import copy
import hashlib
import io
import json
import os
import warnings
import zipfile

import numpy as np
import torch

import dnnlib
from metrics import detectors
from training.dataset_io import list_folder_images
from metrics.detectors import DetectorError  # noqa: F401  (re-exported: callers catch it from here)

_content_hashes = {}  # (path, file signature) -> hash; a dataset is hashed once per process


class MetricError(ValueError):
    """A metric cannot run with the given inputs; the message is one line naming the input and the fix."""


class MetricOptions:
    """Everything a metric needs: the generator, the reference data, processes, device, detectors."""

    def __init__(
        self,
        G=None,                     # generator module (G_ema); None for real-only statistics
        G_kwargs=None,              # extra keyword arguments of every G call, e.g. truncation_psi; None = {}
        dataset_kwargs=None,        # reference dataset kwargs with class_name (resolution/labels forced to G's)
        num_gpus=1,                 # number of processes sharing the work (torch.distributed when > 1)
        rank=0,                     # this process's rank
        device=None,                # torch device; None = cuda if available, else cpu
        verbose=False,              # tqdm progress bars on rank 0
        cache=True,                 # read/write the real-image statistics cache
        seed=0,                     # seed of the fakes' latents and labels and of KID's subsets
        inception_path=None,        # Inception file or URL; None = $SG2KD_INCEPTION_PATH or the official URL
        vgg16_path=None,            # VGG16 file or URL; None = $SG2KD_VGG16_PATH or the official URL
        data_loader_kwargs=None,    # DataLoader kwargs for the reals; None = min(3, CPU count) workers
        batch_size=64,              # images per detector call
        batch_gen=None,             # images per G call; None = min(batch_size, 16)
    ):
        self.G = G
        self.G_kwargs = dnnlib.EasyDict(G_kwargs or {})
        self.dataset_kwargs = dnnlib.EasyDict(dataset_kwargs or {})
        self.num_gpus = int(num_gpus)
        self.rank = int(rank)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.verbose = verbose
        self.cache = cache
        self.seed = int(seed)
        self.inception_path = inception_path
        self.vgg16_path = vgg16_path
        self.data_loader_kwargs = dict(num_workers=min(3, os.cpu_count() or 1), prefetch_factor=2) \
            if data_loader_kwargs is None else dict(data_loader_kwargs)
        self.batch_size = int(batch_size)
        self.batch_gen = int(batch_gen or min(self.batch_size, 16))
        self._dataset = None
        self._G_device = None
        if self.num_gpus > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise MetricError(f"num_gpus={self.num_gpus} needs an initialised torch.distributed group; "
                              "launch with torchrun or pass num_gpus=1")

    def dataset(self):
        """The reference dataset, built once from dataset_kwargs."""
        if self._dataset is None:
            if not self.dataset_kwargs.get("class_name"):
                raise MetricError("no reference dataset: pass --data (or dataset_kwargs with a class_name)")
            self._dataset = dnnlib.util.construct_class_by_name(**self.dataset_kwargs)
        return self._dataset

    def generator(self):
        """A private copy of G on the device, eval mode, no gradients."""
        if self._G_device is None:
            self._G_device = copy.deepcopy(self.G).eval().requires_grad_(False).to(self.device)
        return self._G_device

    def detector(self, kind):
        """The 'inception' or 'vgg16' detector on the device (loaded once per process)."""
        path = self.inception_path if kind == "inception" else self.vgg16_path
        return detectors.get_detector(kind, path, self.device, verbose=self.verbose and self.rank == 0)


# ----------------------------------------------------------------------------
# Work split and gathering.


def batch_plan(num_items, batch_size):
    """[(start, stop)] of the global batches over items 0..num_items-1."""
    return [(start, min(start + batch_size, num_items)) for start in range(0, num_items, batch_size)]


def my_batches(plan, opts):
    """The batches of `plan` this rank handles (every num_gpus-th, starting at rank)."""
    return plan[opts.rank::opts.num_gpus]


def gather_rows(local, plan, opts):
    """Concatenate each rank's rows `[n_r, ...]` back into the global order `[n, ...]` (all ranks get it)."""
    if opts.num_gpus == 1:
        return local
    counts = [sum(stop - start for start, stop in plan[r::opts.num_gpus]) for r in range(opts.num_gpus)]
    padded = local.new_zeros([max(counts)] + list(local.shape[1:]))
    padded[:local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(opts.num_gpus)]
    torch.distributed.all_gather(parts, padded)
    offsets = [0] * opts.num_gpus
    rows = []
    for idx, (start, stop) in enumerate(plan):
        r = idx % opts.num_gpus
        rows.append(parts[r][offsets[r]:offsets[r] + stop - start])
        offsets[r] += stop - start
    return torch.cat(rows)


def progress_bar(opts, total, desc):
    """tqdm bar with rate and ETA on rank 0 when verbose; a silent stand-in otherwise."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, leave=False,
                disable=not (opts.verbose and opts.rank == 0))


# ----------------------------------------------------------------------------
# Images to features.


def quantize_images(img):
    """G output float `[N, C, H, W]` in about [-1, 1] -> uint8 `[N, C, H, W]`, rounding as StyleGAN2-ADA does."""
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def run_detector(detector, images, opts, detector_kwargs):
    """uint8 `[N, C, H, W]` (C = 1 or 3) -> detector output `[N, D]` float32 on the device."""
    images = images.to(opts.device)
    if images.shape[1] == 1:
        images = images.repeat([1, 3, 1, 1])  # grayscale data: the detectors expect RGB
    with torch.no_grad():
        return detector(images, **detector_kwargs).to(torch.float32)


class FeatureStats:
    """Features of a set of images: all rows, and/or their mean and (biased, 1/N) covariance in float64."""

    def __init__(self, features=None, mean=None, cov=None, num_items=0):
        self.features = features    # float32 [N, D] or None
        self.mean = mean            # float64 [D] or None
        self.cov = cov              # float64 [D, D] or None
        self.num_items = num_items

    @classmethod
    def from_features(cls, features, capture_all=True, capture_mean_cov=False):
        """FeatureStats of `[N, D]` features (torch or numpy)."""
        x = features.cpu().numpy() if torch.is_tensor(features) else np.asarray(features)
        mean = cov = None
        if capture_mean_cov:
            x64 = x.astype(np.float64)
            mean = x64.mean(axis=0)
            cov = x64.T @ x64 / len(x64) - np.outer(mean, mean)
        return cls(x.astype(np.float32) if capture_all else None, mean, cov, len(x))

    def get_all(self):
        """float32 `[N, D]`."""
        if self.features is None:
            raise MetricError("these statistics were captured without all features (capture_all=False)")
        return self.features

    def get_mean_cov(self):
        """(mean `[D]`, cov `[D, D]`), float64."""
        if self.mean is None:
            raise MetricError("these statistics were captured without mean/cov (capture_mean_cov=False)")
        return self.mean, self.cov

    def save(self, path):
        """Write atomically as .npz (no pickles)."""
        arrays = {name: value for name, value in [("features", self.features), ("mean", self.mean),
                                                  ("cov", self.cov)] if value is not None}
        buffer = io.BytesIO()
        np.savez(buffer, num_items=np.int64(self.num_items), **arrays)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        dnnlib.util.atomic_write(path, lambda f: f.write(buffer.getvalue()))

    @classmethod
    def load(cls, path):
        with np.load(path, allow_pickle=False) as data:
            get = lambda name: data[name] if name in data.files else None  # noqa: E731
            return cls(get("features"), get("mean"), get("cov"), int(data["num_items"]))


# ----------------------------------------------------------------------------
# Dataset content hash and the stats cache.


def _dataset_files(path):
    """[(relative name, absolute path)] of what the dataset reads: the zip itself, or a folder's images
    (the loader's own listing, symlinks followed) plus its dataset.json."""
    if os.path.isfile(path):
        return [(os.path.basename(path), path)]
    names = list_folder_images(path)
    if os.path.isfile(os.path.join(path, "dataset.json")):
        names.append("dataset.json")
    return sorted((name, os.path.join(path, *name.split("/"))) for name in names)


def dataset_content_hash(path):
    """Hash (hex) of the bytes of every file of a dataset folder or zip; once per process until a file changes."""
    path = os.path.abspath(os.fspath(path))
    files = _dataset_files(path)
    stats = [os.stat(full) for _, full in files]
    signature = tuple((rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                      for (rel, _), st in zip(files, stats, strict=True))
    key = (path, signature)
    if key not in _content_hashes:
        digest = hashlib.blake2b(digest_size=16)
        for (rel, full), st in zip(files, stats, strict=True):
            digest.update(f"{rel}\0{st.st_size}\0".encode("utf-8"))
            with open(full, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    digest.update(chunk)
        _content_hashes[key] = digest.hexdigest()
    return _content_hashes[key]


def stats_cache_path(opts, detector, stats_name, **options):
    """Cache file of the reals' statistics: `<cache>/gan-metrics/<dataset>-<stats_name>-<key>.npz`."""
    dataset = opts.dataset()
    kwargs = opts.dataset_kwargs
    key = dict(content=dataset_content_hash(kwargs.path), detector=getattr(detector, "identity", None),
               dataset={name: kwargs.get(name) for name in ("class_name", "max_size", "xflip", "random_seed")},
               resolution=dataset.resolution, stats_name=stats_name, options=options)
    if not kwargs.get("max_size"):
        key["dataset"].pop("random_seed")  # the seed only picks a max_size subset
    digest = hashlib.md5(json.dumps(key, sort_keys=True, default=str).encode("utf-8"), usedforsecurity=False)
    return dnnlib.make_cache_dir_path("gan-metrics", f"{dataset.name}-{stats_name}-{digest.hexdigest()}.npz")


def _load_cached_stats(path):
    """FeatureStats from a cache file, or None (with a warning) when it is unreadable: it is then rebuilt."""
    try:
        return FeatureStats.load(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        warnings.warn(f"Ignoring the unreadable metric cache file {path} ({type(err).__name__}: {err}); "
                      f"recomputing the reals' statistics and replacing it", RuntimeWarning, stacklevel=2)
        return None


def _from_rank0(make_value, opts):
    """make_value() evaluated on rank 0 only and broadcast (any picklable value) to every rank."""
    if opts.num_gpus == 1:
        return make_value()
    box = [make_value() if opts.rank == 0 else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _finish(local_rows, plan, opts, capture_all, capture_mean_cov, feature_dim):
    local = torch.cat(local_rows) if local_rows else torch.zeros([0, feature_dim], device=opts.device)
    features = gather_rows(local, plan, opts)
    return FeatureStats.from_features(features, capture_all=capture_all, capture_mean_cov=capture_mean_cov)


def compute_feature_stats_for_dataset(opts, detector, detector_kwargs, stats_name, capture_all=False,
                                      capture_mean_cov=False, max_items=None):
    """Detector features of the reference dataset's first `max_items` items (None = all), cached on disk.

    Returns FeatureStats (identical on every rank). `stats_name` and the options name the cache entry.
    """
    dataset = opts.dataset()
    num_items = len(dataset) if max_items is None else min(len(dataset), int(max_items))
    cache_file = None
    if opts.cache and opts.dataset_kwargs.get("path"):  # the key hashes the files under `path`
        # Only rank 0 hashes the dataset (it reads every file) and decides whether the cache exists, so
        # all ranks agree even if the file appears while they check.
        def locate():
            path = stats_cache_path(opts, detector, stats_name, detector_kwargs=detector_kwargs,
                                    capture_all=capture_all, capture_mean_cov=capture_mean_cov, num_items=num_items)
            return path, os.path.isfile(path)
        cache_file, cached = _from_rank0(locate, opts)
        if cached:
            stats = _load_cached_stats(cache_file)
            if stats is not None:
                return stats
    plan = batch_plan(num_items, opts.batch_size)
    indices = [idx for start, stop in my_batches(plan, opts) for idx in range(start, stop)]
    loader_kwargs = dict(opts.data_loader_kwargs)
    if not loader_kwargs.get("num_workers"):
        loader_kwargs.pop("prefetch_factor", None)  # only valid with worker processes
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=opts.batch_size,
                                         shuffle=False, **loader_kwargs)
    rows = []
    with progress_bar(opts, num_items, f"{stats_name} reals") as bar:
        for images, _labels in loader:
            rows.append(run_detector(detector, images, opts, detector_kwargs))
            bar.update(min(len(images) * opts.num_gpus, num_items - bar.n))
    feature_dim = rows[0].shape[1] if rows else 0
    if opts.num_gpus > 1:  # a rank without batches still needs the width to join the gather
        feature_dim = int(max(_all_max(feature_dim, opts), 0))
    stats = _finish(rows, plan, opts, capture_all, capture_mean_cov, feature_dim)
    if cache_file is not None and opts.rank == 0:
        stats.save(cache_file)
    return stats


def _all_max(value, opts):
    tensor = torch.tensor([value], device=opts.device if opts.device.type == "cuda" else "cpu")
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return tensor.item()


def batch_generator(opts, batch_index):
    """torch.Generator for global batch `batch_index`, derived from opts.seed (same fakes for any process count)."""
    state = np.random.SeedSequence([opts.seed, batch_index]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def sample_labels(opts, count, generator):
    """`[count, c_dim]` labels drawn from the reference dataset (G's conditioning), or `[count, 0]`."""
    G = opts.G
    if G.c_dim == 0:
        return torch.zeros([count, 0], device=opts.device)
    dataset = opts.dataset()
    picks = torch.randint(len(dataset), [count], generator=generator).tolist()
    return torch.from_numpy(np.stack([dataset.get_label(idx) for idx in picks])).to(opts.device)


def generate_images(opts, start, stop, batch_index):
    """Fakes of global batch `batch_index` (items start..stop-1): uint8 `[N, C, H, W]`."""
    G = opts.generator()
    gen = batch_generator(opts, batch_index)
    z = torch.randn([stop - start, G.z_dim], generator=gen).to(opts.device)
    c = sample_labels(opts, stop - start, gen)
    images = []
    # G's per-layer noise (noise_mode='random', its default) draws from the global RNG: seed a forked
    # RNG per batch so fakes are reproducible without disturbing the caller's (e.g. training's) RNG.
    devices = [opts.device] if opts.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(torch.randint(2**62, [1], generator=gen)))
        for lo in range(0, stop - start, opts.batch_gen):
            images.append(quantize_images(G(z[lo:lo + opts.batch_gen], c[lo:lo + opts.batch_gen], **opts.G_kwargs)))
    return torch.cat(images)


def compute_feature_stats_for_generator(opts, detector, detector_kwargs, num_gen, capture_all=False,
                                        capture_mean_cov=False, desc="fakes"):
    """Detector features of `num_gen` fakes of opts.G (z ~ N(0, I), c from the dataset's labels).

    Returns FeatureStats (identical on every rank).
    """
    plan = batch_plan(int(num_gen), opts.batch_size)
    rows = []
    with progress_bar(opts, int(num_gen), desc) as bar:
        for batch_index in range(opts.rank, len(plan), opts.num_gpus):
            start, stop = plan[batch_index]
            rows.append(run_detector(detector, generate_images(opts, start, stop, batch_index), opts,
                                     detector_kwargs))
            bar.update(min((stop - start) * opts.num_gpus, int(num_gen) - bar.n))
    feature_dim = rows[0].shape[1] if rows else 0
    if opts.num_gpus > 1:
        feature_dim = int(_all_max(feature_dim, opts))
    return _finish(rows, plan, opts, capture_all, capture_mean_cov, feature_dim)
