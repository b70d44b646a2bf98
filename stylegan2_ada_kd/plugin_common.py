"""Helpers the loss plugins share: their train.py option checks and D-feature probing."""

import click
import torch


def reject_orphan_options(opts, names, switch, fix):
    """Raise click.BadParameter for the first option in `names` given without its `switch` option.

    `opts` is train.py's option dict; an option counts as given when it is neither None nor False
    (flags default to False). `fix` says how to turn the feature on, e.g. '--apa'.
    """
    for name in names:
        if opts.get(name) is not None and opts.get(name) is not False:
            flag = "--" + name.replace("_", "-")
            raise click.BadParameter(f"only applies with {switch}; add {fix} or drop {flag}", param_hint=f"'{flag}'")


def probe_d_feature_channels(ctx, name):
    """Channel count C of D's named feature `name` ([N, C, ...]), from one throw-away pass on zeros.

    For discriminators whose modules do not tell the width; D is deterministic and the pass runs
    under a forked RNG, so training draws the same random numbers with or without the probe.
    """
    n = max(int(ctx.get("batch_gpu") or 2), 2)  # minibatch-std groups need at least two images
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        img = torch.zeros([n, ctx.img_channels or 3, ctx.resolution, ctx.resolution], device=ctx.device)
        _, feats = ctx.D(img, torch.zeros([n, ctx.c_dim], device=ctx.device), return_features=True)
    return int(feats[name].shape[1])
