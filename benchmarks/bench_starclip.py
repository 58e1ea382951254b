"""StarCLIP training speed: one contrastive epoch over the paper-scale training pairs.

Writes ``benchmarks/results/starclip.json``. Usage::

    .venv/bin/python benchmarks/bench_starclip.py                 # paper scale (11,875 pairs)
    .venv/bin/python benchmarks/bench_starclip.py --n-field 20000 --epochs 1

What it measures, in one process so that the variants are compared under the same load:

1. the mock-JWST transforms alone: one pass over the NIRSpec training spectra in batches,
   (i)-(v) and the fill (seconds per epoch);
2. one contrastive epoch (:func:`helpers.starclip.fit_clip`, augmentations included, the
   chapter's batch size) for each choice of trained stages (``train_from`` = conv, fc1, fc2,
   out) and both embeddings, after the frozen prefix of the APOGEE tower has been computed
   once (its time is reported separately, ``prefix_s``); ``epoch_s`` is the chapter's default
   (20 outputs, ``train_from='fc1'``);
3. the same default epoch without the transforms (the baseline of the ratio
   ``augment_ratio``, measured in the same run);
4. the load average before and after each timing (``os.getloadavg``): the machine is shared.

The encoders are StarNet networks of the right sizes with random weights: the time of an
epoch does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from helpers.starclip import (ClipConfig, ClipTower, MockSettings, ModalityBatches, View,
                              fit_clip, mock_chain, starclip_pairs)
from helpers.starnet import StarNet, source_from_survey, starnet_source, starnet_split
from helpers.survey import load_survey, paper_scale_params
from machine import load   # benchmarks/machine.py

RESULTS = Path(__file__).resolve().parent / "results" / "starclip.json"


def main(argv=None) -> dict:
    """Run the benchmark; returns (and writes) the results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-field", type=int, default=None,
                    help="field stars of the survey (default: the paper-scale survey)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per variant (median is kept)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--variants", default="fc1,fc2,out,conv",
                    help="train_from values to time (comma-separated)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    if args.n_field is None:
        # an existing paper-scale survey only: never generate 18 GB from a benchmark
        source = source_from_survey(load_survey(paper_scale_params()))
    else:
        source = starnet_source(n_field=args.n_field)
    split = starnet_split(source, seed=0)
    pairs = starclip_pairs(source, split)
    chain = mock_chain(pairs, MockSettings())
    train = {m: pairs.sets[m]["train"] for m in ("apogee", "nirspec")}
    n = len(train["apogee"])
    out = {"n_pairs": n, "batch_size": args.batch_size, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "source": source.key, "variants": {}}

    # 1. the transforms alone
    nset = train["nirspec"]
    err = pairs.nirspec_error["train"]
    rng = np.random.default_rng(0)
    before = load()
    t0 = time.perf_counter()
    for s in range(0, n, args.batch_size):
        idx = np.arange(s, min(s + args.batch_size, n))
        chain(View(np.asarray(nset.flux[idx]), np.asarray(nset.observed[idx]), err[idx],
                   nset.snr[idx]), rng)
    out["transforms_s"] = time.perf_counter() - t0
    out["transforms_load"] = [before, load()]
    print(f"transforms (i)-(v) over {n:,} NIRSpec spectra: {out['transforms_s']:.2f} s", flush=True)

    # 2. one epoch per variant
    torch.manual_seed(0)
    enc = {m: StarNet(train[m].n_pixels) for m in ("apogee", "nirspec")}
    for embedding in ("output", "projection"):
        for train_from in args.variants.split(","):
            if embedding == "projection" and train_from != "fc1":
                continue
            cfg = ClipConfig(epochs=args.epochs, batch_size=args.batch_size,
                             embedding=embedding, train_from=train_from)
            ta = ClipTower(enc["apogee"], embedding, train_from=train_from)
            tb = ClipTower(enc["nirspec"], embedding, train_from=train_from, seed=1)
            data_a = ModalityBatches(train["apogee"].flux)
            data_b = ModalityBatches(nset.flux, nset.observed, err, nset.snr, chain)
            before = load()
            t0 = time.perf_counter()
            hist = fit_clip(ta, tb, data_a, data_b, cfg, progress=False)
            total = time.perf_counter() - t0
            name = f"{embedding}/{train_from}"
            out["variants"][name] = {
                "epoch_s": float(hist.seconds.median()), "epochs_s": hist.seconds.round(3).tolist(),
                "prefix_s": float(hist.attrs.get("prefix_seconds", 0.0)), "total_s": total,
                "load": [before, load()]}
            print(f"{name:>18}: epoch {hist.seconds.median():6.2f} s (prefix once "
                  f"{hist.attrs.get('prefix_seconds', 0.0):5.1f} s), load {load()}", flush=True)
    # 3. the baseline of the same run: the chapter's default epoch without the transforms
    #    (NIRSpec spectra as simulated), so that the augmentations' cost is a ratio measured
    #    under the same load
    if "fc1" in args.variants.split(","):
        ta = ClipTower(enc["apogee"], "output", train_from="fc1")
        tb = ClipTower(enc["nirspec"], "output", train_from="fc1", seed=1)
        cfg = ClipConfig(epochs=args.epochs, batch_size=args.batch_size, augment=False)
        before = load()
        hist = fit_clip(ta, tb, ModalityBatches(train["apogee"].flux), ModalityBatches(nset.flux),
                        cfg, progress=False)
        out["no_augment_epoch_s"] = float(hist.seconds.median())
        out["no_augment_load"] = [before, load()]
        print(f"output/fc1 without transforms: epoch {out['no_augment_epoch_s']:6.2f} s", flush=True)
    main_variant = out["variants"].get("output/fc1")
    if main_variant is not None:
        out["epoch_s"] = main_variant["epoch_s"]
        out["pairs_per_s"] = n / main_variant["epoch_s"]
        if "no_augment_epoch_s" in out:
            out["augment_ratio"] = main_variant["epoch_s"] / out["no_augment_epoch_s"]
    out["load_end"] = load()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"written {args.out}")
    return out


if __name__ == "__main__":
    main()
