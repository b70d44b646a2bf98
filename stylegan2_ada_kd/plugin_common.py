"""Helpers the loss plugins share: their train.py option checks and D-feature probing."""

import math

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


def parse_term_weights(text, terms, option, terms_source):
    """'a=10,b=5' -> {'a': 10.0, 'b': 5.0}: finite weights >= 0 for names in `terms`, each at most once.

    Raises click.BadParameter naming `option` (e.g. '--kd-weights'); `terms_source` says where the
    allowed names come from, for the message (e.g. 'terms given to --kd').
    """
    weights = {}
    for item in [item.strip() for item in str(text).split(",") if item.strip()]:
        term, sep, value = item.partition("=")
        term = term.strip().lower()
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not sep or term not in terms or term in weights or not (0 <= number < math.inf):
            raise click.BadParameter(f"{item!r}: use TERM=WEIGHT (weight >= 0) for {terms_source} "
                                     f"({', '.join(terms)}), each once", param_hint=f"'{option}'")
        weights[term] = number
    return weights


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
