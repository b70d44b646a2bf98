"""Cost of KD-DLGAN in D's main phase: StyleGAN2Loss Dmain with and without the KD plugin.

Times `accumulate_gradients('Dmain', ...)` (G forward without grad, DiffAugment, D forward and
backward on reals and fakes, plus with KD: the teacher on both batches, the head and the KD terms)
for the presets the paper rows use: `cifar` at 32x32 and `lowshot` at 256x256, each at the batch
sizes given. The teacher is the real open_clip architecture (ViT-B-32 by default) with random
weights, so nothing is downloaded. A step's batch is processed in rounds of --batch-gpu images, as
the training loop does (default: 8 at 256x256, where a whole 32-image D graph pair would need tens
of GiB of host memory; the whole batch at 32x32); the teacher runs once per round on 2 x batch-gpu
images. Columns: median seconds per step without and with KD, their ratio, and the teacher's share
(its encode_images calls alone). Other processes on the machine skew CPU timings: the header
prints the thread count, and plain and KD steps alternate so both see the same load.

    python bench/kd.py                                   # 32x32 and 256x256, batch 8 and 32, agkd,cgkd
    python bench/kd.py --res 256 --batch 32 --reps 3
    python bench/kd.py --kd agkd,cgkd --kd-interval 4    # KD on every 4th D step
    python bench/kd.py --ref                             # pure-PyTorch ops instead of the C++ kernels
"""

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PRESET_BY_RES = {32: "cifar", 256: "lowshot"}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", type=int, nargs="+", default=[32, 256], help="resolutions (32: cifar, else lowshot)")
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32], help="images per step")
    parser.add_argument("--batch-gpu", type=int, default=None, help="images per round (default: 8 at >= 128 px, "
                        "else the batch)")
    parser.add_argument("--reps", type=int, default=3, help="timed steps per variant (median reported)")
    parser.add_argument("--kd", default="agkd,cgkd", help="KD terms")
    parser.add_argument("--kd-interval", type=int, default=1, help="KD on every N-th step")
    parser.add_argument("--teacher", default="ViT-B-32:random", help="teacher spec (random weights: offline)")
    parser.add_argument("--preprocess", default="clip", choices=["clip", "released"])
    parser.add_argument("--channels-last", action="store_true", help="teacher input in channels_last")
    parser.add_argument("--ref", action="store_true", help="pure-PyTorch ops (no C++ kernels)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    return parser.parse_args()


def build_networks(res, device):
    """G and D as train.py builds them for the preset of this resolution, plus DiffAugment."""
    import dnnlib
    from stylegan2_ada_kd.diffaugment import DiffAugment
    from training import train_options

    cfg = PRESET_BY_RES.get(res, "lowshot")
    spec = train_options.resolve_preset(cfg, res, 1)
    opts = dnnlib.EasyDict(train_options.OPTION_DEFAULTS, cfg=cfg)
    G_kwargs, D_kwargs = train_options._network_kwargs(opts, spec)
    common = dict(c_dim=0, img_resolution=res, img_channels=3)
    G = dnnlib.util.construct_class_by_name(**G_kwargs, **common).train().requires_grad_(False).to(device)
    D = dnnlib.util.construct_class_by_name(**D_kwargs, **common).train().requires_grad_(True).to(device)
    return cfg, spec, G, D, DiffAugment(train_options.DIFFAUG_DEFAULT_POLICY).to(device)


def make_losses(args, res, device):
    """(plain StyleGAN2Loss, StyleGAN2Loss with KDLoss, cfg, G, D) sharing one G and D."""
    import dnnlib
    from training.loss import StyleGAN2Loss

    cfg, spec, G, D, pipe = build_networks(res, device)
    ctx = dnnlib.EasyDict(resolution=res, img_channels=3, class_names=None)
    kd = dict(class_name="stylegan2_ada_kd.kd_plugin.KDLoss", terms=args.kd.split(","), teacher=args.teacher,
              preprocess=args.preprocess, interval=args.kd_interval, channels_last=args.channels_last)
    plain = StyleGAN2Loss(device, G, D, augment_pipe=pipe, r1_gamma=spec.gamma, plugin_context=ctx)
    with_kd = StyleGAN2Loss(device, G, D, augment_pipe=pipe, r1_gamma=spec.gamma, plugin_context=ctx, plugins=[kd])
    return plain, with_kd, cfg, G, D


def timed_step(loss, D, rounds, device):
    """Seconds for one Dmain step made of `rounds` (real, c, z, c) batches; D's gradients cleared first."""

    D.zero_grad(set_to_none=True)
    for plugin in loss.plugins.values():
        plugin.zero_grad(set_to_none=True)
    sync(device)
    start = time.perf_counter()
    for real, real_c, z, gen_c in rounds:
        loss.accumulate_gradients("Dmain", real, real_c, z, gen_c, gain=1)
    sync(device)
    elapsed = time.perf_counter() - start
    loss.after_step(0, sum(r[0].shape[0] for r in rounds))
    return elapsed


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args, res, batch, device):
    """dict(plain_s, kd_s, teacher_s) medians for one resolution and batch."""
    import torch

    plain, with_kd, cfg, G, D = make_losses(args, res, device)
    batch_gpu = args.batch_gpu or (min(batch, 8) if res >= 128 else batch)
    if batch % batch_gpu:
        raise SystemExit(f"--batch {batch} is not a multiple of the batch per round {batch_gpu}; change --batch-gpu")
    gen = torch.Generator().manual_seed(0)
    rounds = [(torch.rand([batch_gpu, 3, res, res], generator=gen).to(device) * 2 - 1, torch.zeros([batch_gpu, 0],
               device=device), torch.randn([batch_gpu, G.z_dim], generator=gen).to(device),
               torch.zeros([batch_gpu, 0], device=device)) for _ in range(max(batch // batch_gpu, 1))]
    teacher = with_kd.plugins["kd"].teacher
    images = torch.rand([2 * batch_gpu, 3, res, res], device=device) * 2 - 1
    # Warm-up on one round (first-call costs are per shape): kernel builds, oneDNN primitives, allocator.
    timed_step(plain, D, rounds[:1], device)
    timed_step(with_kd, D, rounds[:1], device)
    times = {"plain": [], "kd": [], "teacher": []}
    for _ in range(args.reps):
        times["plain"].append(timed_step(plain, D, rounds, device))
        times["kd"].append(timed_step(with_kd, D, rounds, device))
        sync(device)
        start = time.perf_counter()
        for _ in rounds:
            teacher.encode_images(images)
        sync(device)
        times["teacher"].append(time.perf_counter() - start)
    med = {key: sorted(values)[len(values) // 2] for key, values in times.items()}
    return dict(cfg=cfg, batch_gpu=batch_gpu, **med)


def main():
    args = parse_args()
    if args.ref:
        os.environ["SG2KD_DISABLE_CUSTOM_OPS"] = "1"
    import torch

    from training import training_setup

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    malloc = training_setup.configure_cpu_malloc() if device.type == "cpu" else None
    import logging
    logging.disable(logging.WARNING)  # open_clip's "random weights" notice; expected here
    print(f"# {' '.join(sys.argv)}")
    print(f"# torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, ops {'ref' if args.ref else 'kernels'}, "
          f"malloc {'tuned' if malloc else 'default'}, teacher {args.teacher} ({args.preprocess}"
          f"{', channels_last' if args.channels_last else ''}), kd {args.kd}, interval {args.kd_interval}, "
          f"median of {args.reps}")
    print("| res | cfg | batch | batch-gpu | Dmain s | Dmain+KD s | ratio | teacher s |")
    print("|---|---|---|---|---|---|---|---|")
    for res in args.res:
        for batch in args.batch:
            r = measure(args, res, batch, device)
            print(f"| {res}x{res} | {r['cfg']} | {batch} | {r['batch_gpu']} | {r['plain']:.2f} | {r['kd']:.2f} | "
                  f"{r['kd'] / r['plain']:.2f} | {r['teacher']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
