"""The StyleGAN2-ADA training loop (REFERENCE.md 2.3 schedule) with loss plugins and exact resume.

`training_loop(**kwargs)` is called once per process by train.py. It builds every component from
its kwargs (`class_name` + arguments), trains in ticks of `kimg_per_tick`, and writes (rank 0)
stats.jsonl, TensorBoard events (when importable), reals.png / fakes_init.png / fakesNNNNNN.png,
network-snapshot-NNNNNN.pkl and training-state-NNNNNN.pt (training/snapshot.py).

Exact resume (resume_pkl = a training-state-*.pt): networks, optimizer moments, ADA p and its
partial statistics, the loss's and plugins' state, every RNG (torch, CUDA, numpy, python) per rank
and the data position are restored, and the schedule options that shape the run (seed, batch,
EMA, ADA, lazy-regularisation intervals) are taken from the saved kwargs. The maintenance work
at tick ends (snapshots, metrics, image grids) runs between saving and restoring the RNG states,
so it never changes what the training steps draw, and ADA's pending sign statistics are carried
as exact integer sums. The data order comes from a seeded sampler and a deterministic dataset, so
it does not depend on the number of DataLoader workers. Bit-exact continuation holds on the CPU
with the same torch thread count and the same number of processes; it does not hold on CUDA
(cuDNN autotuning and atomic reductions are not deterministic) nor across a change of process
count (RNG streams are re-seeded, with a warning), nor for options outside EXACT_RESUME_KEYS
that the user changes on purpose (loss, plugin and network options must match the saved run).
A network pickle (resume_pkl = *.pkl or URL) transfers G, D and G_ema weights only.
"""

import copy
import importlib.util
import os
import sys
import time

import psutil
import torch

import dnnlib
import legacy
from torch_utils import distributed, misc, training_stats
from training import snapshot, training_logs
from training import training_setup as setup
from training.training_step import TrainingSteps

# Options restored from a training state for an exact continuation (they shape the step sequence).
EXACT_RESUME_KEYS = ("random_seed", "batch_size", "batch_gpu", "ema_kimg", "ema_rampup", "ada_target",
                     "ada_interval", "ada_kimg", "G_reg_interval", "D_reg_interval")
# Running averages that legitimately differ between ranks (each rank updates them from its own batch).
CONSISTENCY_IGNORE = r".*\.[^.]+_(avg|ema)"


def training_loop(
    run_dir=".",                    # output directory; log.txt is set up by the caller
    training_set_kwargs={},         # training set: class_name + arguments  # noqa: B006 (never mutated)
    data_loader_kwargs={},          # torch DataLoader options (num_workers, pin_memory, prefetch_factor)  # noqa: B006
    G_kwargs={},                    # generator: class_name + arguments  # noqa: B006
    D_kwargs={},                    # discriminator: class_name + arguments  # noqa: B006
    G_opt_kwargs={},                # G optimizer: class_name + arguments  # noqa: B006
    D_opt_kwargs={},                # D optimizer (also trains plugin parameters)  # noqa: B006
    augment_kwargs=None,            # augment stage (AugmentPipe / DiffAugment kwargs); None = none
    loss_kwargs={},                 # loss: class_name + arguments, incl. `plugins`  # noqa: B006
    augment_p=0,                    # initial augmentation probability
    ada_target=None,                # ADA target for E[sign(D(real))]; None = fixed p
    ada_kimg=500,                   # ADA: kimg for p to move by 1
    ada_interval=4,                 # ADA: steps between p adjustments
    metrics=[],                     # metric names evaluated at network snapshots  # noqa: B006
    metric_dataset_kwargs=None,     # reference dataset for metrics (e.g. a test split); None = the training set
    random_seed=0,                  # global seed; rank r uses random_seed * num_gpus + r
    num_gpus=1,                     # number of processes (GPUs, or CPU processes with gloo)
    rank=0,                         # rank of this process
    local_rank=None,                # device index on this node; None = 0
    batch_size=4,                   # total batch over all processes
    batch_gpu=4,                    # batch per process per accumulation round
    ema_kimg=10,                    # G EMA half-life in kimg
    ema_rampup=0.05,                # EMA ramp-up: half-life at most cur_nimg * ema_rampup; None = off
    G_reg_interval=4,               # lazy path-length regularisation interval; None = with Gmain
    D_reg_interval=16,              # lazy R1 interval; None = with Dmain
    total_kimg=25000,               # training length in kimg
    kimg_per_tick=4,                # progress line / stats interval in kimg
    image_snapshot_ticks=50,        # ticks between fakes grids; None = only fakes_init
    network_snapshot_ticks=50,      # ticks between snapshots (pickle + training state); None = never
    keep_last=None,                 # keep only the newest N snapshot pairs; None = keep all
    resume_pkl=None,                # network pickle (weights) or training-state-*.pt (exact); None = fresh
    allow_partial=False,            # allow a pickle transfer with missing or mis-shaped tensors
    cudnn_benchmark=True,           # torch.backends.cudnn.benchmark
    allow_tf32=False,               # TF32 for matmuls and cuDNN convolutions
    device="auto",                  # 'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:N'
    grid_size=None,                 # max images per grid side, or (gw, gh); None = auto (8x4 off CUDA)
    abort_fn=None,                  # callable -> True to stop at the next tick end
    progress_fn=None,               # callable(cur_kimg, total_kimg) at start and every tick end
):
    """Train a StyleGAN2(-ADA) GAN; see the module docstring. Arguments are the train.py contract."""
    opts = dnnlib.EasyDict(locals())
    _TrainingRun(opts).run()


class _TrainingRun:
    """One process's training run: set-up, the step loop and the tick-end maintenance."""

    def __init__(self, opts):
        self.o = opts
        self.rank = int(opts.rank)
        self.print = print if self.rank == 0 else (lambda *args, **kwargs: None)

    # ------------------------------------------------------------------ set-up

    def run(self):
        self._setup()
        self.print(f"Training for {self.o.total_kimg} kimg...")
        self.print()
        if self.o.progress_fn is not None:
            self.o.progress_fn(self.cur_nimg // 1000, self.o.total_kimg)
        try:
            while True:
                self.steps.step(self)
                if self._tick_due() and self._end_tick():
                    break
        finally:
            if self.stats_writer is not None:
                self.stats_writer.close()
        distributed.barrier()  # rank 0 may still be writing the last snapshot; leave together
        self.print()
        self.print("Exiting...")

    def _setup(self):
        o = self.o
        self.start_time = time.time()
        self.device = setup.resolve_device(o.device, o.local_rank)
        self.resume_state = self._read_resume_state()
        self._check_options()
        if self.device.type == "cpu":
            note = setup.configure_cpu_malloc()
            if note:
                self.print(note)
        setup.configure_backends(o.cudnn_benchmark, o.allow_tf32)
        self._init_processes()
        setup.seed_everything(o.random_seed * o.num_gpus + self.rank)
        self._setup_data()
        self._setup_networks()
        self._setup_augment()
        self.print(f"Distributing across {o.num_gpus} GPUs...")
        for module in (self.G, self.D, self.G_ema, self.augment_pipe):
            setup.broadcast_module(module)
        self.print("Setting up training phases...")
        self.steps = TrainingSteps(self)
        self._export_samples()
        self._init_logs()
        self._init_counters()
        if self.resume_state is not None:
            self._restore_state(self.resume_state)
            self.resume_state = None  # free the memory
            if self.grid is not None:
                self._save_fakes("fakes_init.png")  # G_ema in eval with constant noise: draws no random numbers

    def _read_resume_state(self):
        """The training state to continue from (schedule options taken from it), or None."""
        o = self.o
        self.resume_notes = []
        if not o.resume_pkl or not str(o.resume_pkl).endswith(".pt"):
            return None
        state = snapshot.load_training_state(o.resume_pkl)
        saved = state.get("kwargs", {})
        notes = []
        for key in EXACT_RESUME_KEYS:
            if key in saved and saved[key] != o[key]:
                notes.append(f"{key}={saved[key]!r} (given {o[key]!r})")
                o[key] = saved[key]
        self.resume_notes = [f'Resuming from "{o.resume_pkl}": training state at kimg {state["cur_nimg"] / 1000:.3f}, '
                             f'tick {state["cur_tick"]} (exact continuation)']
        if notes:
            self.resume_notes.append(f"Using the saved options for an exact continuation: {', '.join(notes)}")
        return state

    def _check_options(self):
        o = self.o
        if o.num_gpus < 1 or not 0 <= self.rank < o.num_gpus:
            raise ValueError(f"rank={o.rank}, num_gpus={o.num_gpus}; need num_gpus >= 1 and 0 <= rank < num_gpus")
        if o.batch_gpu < 1 or o.batch_size % (o.batch_gpu * o.num_gpus) != 0:
            raise ValueError(f"batch_size={o.batch_size} is not a multiple of batch_gpu * num_gpus = "
                             f"{o.batch_gpu} * {o.num_gpus}; change --batch or the number of GPUs")
        self.batch_per_rank = o.batch_size // o.num_gpus
        if o.metrics and not _module_exists("metrics.metric_main"):
            if self.rank == 0:
                training_logs.warn_once(f"metrics {list(o.metrics)} requested but metrics.metric_main is not "
                                        "available; snapshots will not be evaluated")
            self.metrics = []
        else:
            self.metrics = list(o.metrics or [])

    def _init_processes(self):
        o = self.o
        if o.num_gpus > 1:
            dist = torch.distributed
            if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() != o.num_gpus:
                raise RuntimeError(f"num_gpus={o.num_gpus} needs an initialised torch.distributed group of that size; "
                                   "launch with torchrun (train.py does this) or pass num_gpus=1")
            training_stats.init_multiprocessing(rank=self.rank, sync_device=self.device)

    def _setup_data(self):
        o = self.o
        self.print("Loading training set...")
        self.training_set = dnnlib.util.construct_class_by_name(**o.training_set_kwargs)
        # Every step draws batch_size global indices, so this rank has consumed cur_nimg / num_gpus.
        skip = self.resume_state["cur_nimg"] // o.num_gpus if self.resume_state is not None else 0
        self.data_iter = setup.make_data_iterator(self.training_set, o.data_loader_kwargs, self.rank, o.num_gpus,
                                                  self.batch_per_rank, o.random_seed, skip, self.device)
        self.print()
        self.print("Num images: ", len(self.training_set))
        self.print("Image shape:", self.training_set.image_shape)
        self.print("Label shape:", self.training_set.label_shape)
        self.print()

    def _setup_networks(self):
        o = self.o
        self.print("Constructing networks...")
        common = dict(c_dim=self.training_set.label_dim, img_resolution=self.training_set.resolution,
                      img_channels=self.training_set.num_channels)
        self.G = dnnlib.util.construct_class_by_name(**o.G_kwargs, **common).train().requires_grad_(False)
        self.G.to(self.device)
        self.D = dnnlib.util.construct_class_by_name(**o.D_kwargs, **common).train().requires_grad_(False)
        self.D.to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval()
        for note in self.resume_notes:
            self.print(note)  # the weights themselves are restored at the end of set-up
        if o.resume_pkl and self.resume_state is None:
            self.print(f'Resuming from "{o.resume_pkl}"')
            with dnnlib.util.open_url(o.resume_pkl) as f:
                resume_data = legacy.load_network_pkl(f)
            snapshot.transfer_from_pickle(resume_data, {"G": self.G, "D": self.D, "G_ema": self.G_ema},
                                          o.allow_partial, log=self.print)
            del resume_data
        if self.rank == 0:
            self._print_summaries()

    def _print_summaries(self):
        """Module tables of G and D; their buffers (G's w_avg) are put back so the summary changes nothing."""
        saved = [buf.detach().clone() for buf in list(self.G.buffers()) + list(self.D.buffers())]
        z = torch.zeros([self.o.batch_gpu, self.G.z_dim], device=self.device)
        c = torch.zeros([self.o.batch_gpu, self.G.c_dim], device=self.device)
        with torch.no_grad():
            img = misc.print_module_summary(self.G, [z, c])
            misc.print_module_summary(self.D, [img, c])
            for buf, value in zip(list(self.G.buffers()) + list(self.D.buffers()), saved):
                buf.copy_(value)

    def _setup_augment(self):
        o = self.o
        self.print("Setting up augmentation...")
        self.augment_pipe = None
        self.ada_stats = None
        if o.augment_kwargs is None:
            return
        pipe = dnnlib.util.construct_class_by_name(**o.augment_kwargs).train().requires_grad_(False)
        self.augment_pipe = pipe.to(self.device)
        has_p = "p" in dict(pipe.named_buffers())
        if has_p:
            pipe.p.copy_(torch.as_tensor(float(o.augment_p)))
        if o.ada_target is not None:
            if not has_p:
                raise ValueError(f"ada_target={o.ada_target} but the augment stage {type(pipe).__name__} has no "
                                 "adjustable p buffer; pass ada_target=None (fixed p) with it")
            # keep_previous=False: an interval with no new reports must read as empty, not repeat the last one.
            self.ada_stats = training_stats.Collector(regex="Loss/signs/real", keep_previous=False)

    def _export_samples(self):
        o = self.o
        self.print("Exporting sample images...")
        self.grid = None
        if self.rank != 0:
            return
        width, height = self.training_set.image_shape[2], self.training_set.image_shape[1]
        grid_size = training_logs.default_grid_size(width, height, self.device.type, max_side=o.grid_size)
        images, labels = training_logs.setup_snapshot_image_grid(self.training_set, grid_size, o.random_seed)
        training_logs.save_image_grid(images, os.path.join(o.run_dir, "reals.png"), drange=[0, 255],
                                      grid_size=grid_size)
        grid_z = torch.randn([labels.shape[0], self.G.z_dim], device=self.device).split(o.batch_gpu)
        grid_c = torch.from_numpy(labels).to(self.device).split(o.batch_gpu)
        self.grid = dnnlib.EasyDict(size=grid_size, z=grid_z, c=grid_c)
        if self.resume_state is None:
            self._save_fakes("fakes_init.png")  # when resuming: after the restore, from the resumed G_ema

    def _save_fakes(self, name):
        images = training_logs.generate_grid_images(self.G_ema, self.grid.z, self.grid.c)
        training_logs.save_image_grid(images, os.path.join(self.o.run_dir, name), drange=[-1, 1],
                                      grid_size=self.grid.size)

    def _init_logs(self):
        self.print("Initializing logs...")
        self.stats_collector = training_stats.Collector(regex=".*")
        self.stats_metrics = {}
        self.stats_writer = None
        if self.rank == 0:
            self.stats_writer = training_logs.StatsWriter(self.o.run_dir, self.start_time, log=self.print)

    def _init_counters(self):
        self.cur_nimg = 0
        self.cur_tick = 0
        self.batch_idx = 0
        self.tick_start_nimg = 0
        self.tick_start_time = time.time()
        self.maintenance_time = self.tick_start_time - self.start_time
        self.ada_carry = [0, 0]  # ADA sign statistics since the last adjustment: [count, integer sum]
        self.nonfinite_tick = torch.zeros([], dtype=torch.int64, device=self.device)

    # ------------------------------------------------------------------ ticks

    def _tick_due(self):
        o = self.o
        if self.cur_nimg >= o.total_kimg * 1000 or self.cur_tick == 0:
            return True
        return self.cur_nimg >= self.tick_start_nimg + o.kimg_per_tick * 1000

    def _end_tick(self):
        """Tick-end maintenance (all ranks); returns True when training is over."""
        o = self.o
        done = self.cur_nimg >= o.total_kimg * 1000
        tick_end_time = time.time()
        self.steps.fold_ada_stats(self)
        rng_state = setup.get_rng_state(self.device)  # the state the next step must start from
        self._report_progress(tick_end_time)
        if o.abort_fn is not None and o.abort_fn():
            done = True
            self.print()
            self.print("Aborting...")
        if self.rank == 0 and o.image_snapshot_ticks and (done or self.cur_tick % o.image_snapshot_ticks == 0):
            self._save_fakes(f"fakes{self.cur_nimg // 1000:06d}.png")
        if o.network_snapshot_ticks and (done or self.cur_tick % o.network_snapshot_ticks == 0):
            self._snapshot(rng_state)
        self.stats_collector.update()
        if self.stats_writer is not None:
            self.stats_writer.write(self.stats_collector.as_dict(), self.stats_metrics,
                                    global_step=int(self.cur_nimg / 1e3))
        if o.progress_fn is not None:
            o.progress_fn(self.cur_nimg // 1000, o.total_kimg)
        setup.set_rng_state(rng_state, self.device)  # maintenance must not change what training draws
        self.cur_tick += 1
        self.tick_start_nimg = self.cur_nimg
        self.tick_start_time = time.time()
        self.maintenance_time = self.tick_start_time - tick_end_time
        return done

    def _report_progress(self, tick_end_time):
        """Report the Progress/Timing/Resources stats of this tick and print the tick line."""
        o = self.o
        tick_sec = tick_end_time - self.tick_start_time
        sec_per_kimg = tick_sec / max(self.cur_nimg - self.tick_start_nimg, 1) * 1000
        gpu_mem = 0.0
        if self.device.type == "cuda":
            gpu_mem = torch.cuda.max_memory_allocated(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)
        fields = dnnlib.EasyDict(
            tick=self.cur_tick, kimg=self.cur_nimg / 1e3, total_sec=tick_end_time - self.start_time,
            sec_per_tick=tick_sec, sec_per_kimg=sec_per_kimg, maintenance_sec=self.maintenance_time,
            cpu_mem_gb=psutil.Process(os.getpid()).memory_info().rss / 2**30, gpu_mem_gb=gpu_mem,
            augment=float(self.augment_pipe.p) if self.augment_pipe is not None else 0.0,
            extra=self.steps.loss.tick_fields() if hasattr(self.steps.loss, "tick_fields") else {},
            nonfinite=int(self.nonfinite_tick),
            eta_sec=max(o.total_kimg * 1000 - self.cur_nimg, 0) / 1000 * sec_per_kimg)
        self.nonfinite_tick.zero_()
        report0 = training_stats.report0
        report0("Progress/tick", fields.tick)
        report0("Progress/kimg", fields.kimg)
        report0("Timing/total_sec", fields.total_sec)
        report0("Timing/sec_per_tick", fields.sec_per_tick)
        report0("Timing/sec_per_kimg", fields.sec_per_kimg)
        report0("Timing/maintenance_sec", fields.maintenance_sec)
        report0("Resources/cpu_mem_gb", fields.cpu_mem_gb)
        report0("Resources/peak_gpu_mem_gb", fields.gpu_mem_gb)
        report0("Progress/augment", fields.augment)
        report0("Timing/total_hours", fields.total_sec / (60 * 60))
        report0("Timing/total_days", fields.total_sec / (24 * 60 * 60))
        self.print(training_logs.tick_line(fields))

    # ------------------------------------------------------------------ snapshots

    def _snapshot(self, rng_state):
        """Write the training state and the network pickle (rank 0), prune, evaluate metrics."""
        o = self.o
        data = None
        if self.rank == 0 or self.metrics:
            data = snapshot.network_snapshot_data(self.G, self.D, self.G_ema, self.augment_pipe,
                                                  o.training_set_kwargs, self.steps.loss.plugin_states())
        if o.num_gpus > 1:
            for module in (self.G, self.D, self.G_ema, self.augment_pipe):
                if module is not None:
                    misc.check_ddp_consistency(module, ignore_regex=CONSISTENCY_IGNORE)
        state = self._training_state(rng_state)
        snapshot_pkl = os.path.join(o.run_dir, snapshot.network_snapshot_name(self.cur_nimg))
        if self.rank == 0:
            state_path = snapshot.save_training_state(o.run_dir, self.cur_nimg, state)
            snapshot_pkl = snapshot.save_network_snapshot(o.run_dir, self.cur_nimg, data)
            snapshot.prune_snapshots(o.run_dir, o.keep_last, protect=[state_path, snapshot_pkl])
        if self.metrics:
            self._evaluate_metrics(data, snapshot_pkl)

    def _training_state(self, rng_state):
        """The training-state dict on rank 0 (None elsewhere); collective when num_gpus > 1."""
        o = self.o
        local = {"rng": rng_state, "loss": self.steps.loss.state_dict(),
                 "G_buffers": {name: buf.detach().cpu().clone() for name, buf in self.G.named_buffers()}}
        ranks = [local]
        if o.num_gpus > 1:
            ranks = [None] * o.num_gpus
            torch.distributed.all_gather_object(ranks, local)
        if self.rank != 0:
            return None
        kwargs = {key: value for key, value in o.items() if key not in ("abort_fn", "progress_fn")}
        return dict(
            cur_nimg=self.cur_nimg, cur_tick=self.cur_tick + 1, batch_idx=self.batch_idx,
            data_position=self.batch_idx * self.batch_per_rank, num_gpus=o.num_gpus,
            G=_cpu_state(self.G), D=_cpu_state(self.D), G_ema=_cpu_state(self.G_ema),
            augment_pipe=_cpu_state(self.augment_pipe) if self.augment_pipe is not None else None,
            optimizers=self.steps.optimizer_states(), ada_carry=list(self.ada_carry), ranks=ranks,
            plugin_names=list(self.steps.loss.plugins), kwargs=snapshot.plain(kwargs), timestamp=time.time())

    def _restore_state(self, state):
        """Continue exactly from a training state (called at the very end of set-up)."""
        o = self.o
        modules = [("G", self.G), ("D", self.D), ("G_ema", self.G_ema), ("augment_pipe", self.augment_pipe)]
        for name, module in modules:
            if (module is None) != (state[name] is None):
                raise ValueError(f"{o.resume_pkl}: the saved run {'had' if state[name] is not None else 'had no'} "
                                 f"{name}; resume with the same augmentation options")
            if module is not None:
                _load_module_state(module, state[name], name, o.resume_pkl)
        self.steps.load_optimizer_states(state["optimizers"])
        self.cur_nimg, self.cur_tick, self.batch_idx = state["cur_nimg"], state["cur_tick"], state["batch_idx"]
        self.tick_start_nimg = self.cur_nimg
        self.ada_carry = list(state["ada_carry"])
        ranks = state["ranks"]
        if len(ranks) != o.num_gpus:
            self.print(f"Warning: the state was saved by {len(ranks)} process(es), this run has {o.num_gpus}; "
                       "RNG streams are re-seeded, so the continuation is not bit-exact")
        local = ranks[self.rank % len(ranks)]
        self.steps.loss.load_state_dict(local["loss"])
        with torch.no_grad():
            for name, buf in self.G.named_buffers():
                buf.copy_(local["G_buffers"][name])
        if len(ranks) == o.num_gpus:
            setup.set_rng_state(local["rng"], self.device)

    def _evaluate_metrics(self, data, snapshot_pkl):
        from metrics import metric_main
        o = self.o
        self.print("Evaluating metrics...")
        for metric in self.metrics:
            reference = o.metric_dataset_kwargs or o.training_set_kwargs
            result_dict = metric_main.calc_metric(metric=metric, G=data["G_ema"], dataset_kwargs=reference,
                                                  num_gpus=o.num_gpus, rank=self.rank, device=self.device)
            if self.rank == 0:
                line = metric_main.report_metric(result_dict, run_dir=o.run_dir, snapshot_pkl=snapshot_pkl)
                if line:
                    self.print(line)
            self.stats_metrics.update(result_dict.results)


def _module_exists(name):
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a missing parent package
        return False


def _cpu_state(module):
    return {name: value.detach().cpu().clone() for name, value in module.state_dict().items()}


def _load_module_state(module, state, name, path):
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"{path}: the saved {name} does not fit this run's {name} ({first}); resume with the "
                         "same network options as the saved run") from None
