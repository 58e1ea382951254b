"""StarNet training speed: one epoch over the paper-scale training split, and what makes it fast.

Writes ``benchmarks/results/starnet.json``. Usage::

    .venv/bin/python benchmarks/bench_starnet.py              # paper scale (238,400 stars)
    STARS_BOOK_CACHE=/work/cache_v5 .venv/bin/python benchmarks/bench_starnet.py \
        --threads 2 --epoch-modalities apogee --epoch-precisions bf16-fc float32
        # the headline run (paper-scale survey present)
    .venv/bin/python benchmarks/bench_starnet.py --n-field 20000 --batches 10

What it measures, all in one process so that ratios are fair:

1. the machine's float32 matrix-product throughput (a 4096 x 4096 GEMM);
2. per-batch time of eight variants, interleaved over rounds (median per batch, wall clock
   and this process's CPU time, and per phase: reading the batch, forward, backward,
   optimiser): the straightforward loop (``torch.nn`` layers with oneDNN convolutions on
   (N, C, L) tensors, ELU before the pool, for-each AdamW, the system allocator); the same
   with fused AdamW and :func:`helpers.starnet.fast_allocation`; the book's StarNet (its
   channels-last convolution block as well, 16 spectra at a time), and the same in chunks of
   32 spectra; the book's with one torch thread, in chunks of 16 and of 32; the book's with its fully connected layers in bfloat16
   (``TrainConfig(precision='bf16-fc')``, the book's default since 30 Nov 2026; its
   accuracy is measured by ``bench_starnet_bf16.py`` and in the chapter), with the default
   threads and with one (every other variant is float32);
3. a torch.profiler table of the book's step (per-operator self time, one and two threads);
4. one full training epoch of the book's code (:func:`helpers.starnet.train_epoch`) over the
   training part of the StarNet split, APOGEE and NIRSpec, in the book's default precision
   (``--epoch-precisions``: in each of those given): ``epoch_s`` and ``spectra_per_s`` (the
   APOGEE epoch in the default precision; ``epoch_s_float32``, ``epoch_s_bf16_fc`` per
   precision measured); the useful floating-point work of a step
   (dense convolutions, as PyTorch's layers compute them) divided by the time, as a
   fraction of the GEMM rate.

The load average (``os.getloadavg``) is recorded with every timing: the machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from helpers.starnet import (PRECISIONS, LabelScaler, StarNet, TrainConfig, centred_rms,
                             fast_allocation, pooled_length, reference_sequential,
                             source_from_survey, starnet_data, starnet_loss, starnet_source,
                             starnet_split, torch_threads, train_epoch, training_step)
from helpers.survey import load_survey
from machine import gemm_gflops, load   # benchmarks/machine.py

RESULTS = Path(__file__).resolve().parent / "results" / "starnet.json"


def flops_per_spectrum(n_pixels: int) -> float:
    """Floating-point operations of one training step per spectrum (forward + backward).

    Dense convolutions as PyTorch's layers compute them; the spectra need no gradient, so
    the first convolution's backward pass is its weight gradient only.
    """
    l1 = n_pixels - 7
    l2 = l1 - 7
    l3 = pooled_length(n_pixels)
    conv1 = 2 * l1 * 4 * 8
    conv2 = 2 * l2 * 16 * 32
    fc = 2 * (16 * l3 * 256 + 256 * 128 + 128 * 20 + 128 * 20)
    return conv1 * 2 + conv2 * 3 + fc * 3


class PlainStarNet(nn.Module):
    """The straightforward model: torch.nn layers, as the essay wrote it, plus a log-variance head."""

    def __init__(self, n_pixels: int):
        super().__init__()
        seq = reference_sequential(n_pixels)
        self.trunk = seq[:-1]
        self.fc3 = seq[-1]
        self.logvar = nn.Linear(128, 20)

    def predict_with_logvar(self, x):
        h = self.trunk(x)
        return self.fc3(h), self.logvar(h.detach())


def book_model(n_pix: int, chunk: int | None = None, precision: str = "float32") -> StarNet:
    """The book's StarNet; ``chunk``: spectra per block call (None: the book's default)."""
    m = StarNet(n_pix, precision=precision)
    if chunk is not None:
        m.chunk = chunk
    return m


PHASES = ("data", "forward", "backward", "optimizer")


def time_batches(model, fused: bool, heap: bool, data, y, w, batches: int, batch: int,
                 seed: int = 0, threads: int | None = None) -> dict:
    """Median seconds per training batch of ``model`` over ``batches`` batches, and per phase.

    ``threads``: torch threads during the timing (restored after). ``cpu``: the median CPU
    time of this process per batch (with one thread, the work done, little moved by other
    jobs; with two, it includes the threads' waits for each other).
    """
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused,
                            foreach=None if fused else True)
    model.train()
    rng = np.random.default_rng(seed)
    times = {k: [] for k in ("total", "cpu") + PHASES}
    ctx = fast_allocation() if heap else contextlib.nullcontext()
    with ctx, torch_threads(threads):
        for b in range(batches + 2):
            idx = np.sort(rng.choice(len(data), batch, replace=False))
            c0 = time.process_time()
            t0 = time.perf_counter()
            x = torch.from_numpy(data.rows(idx))
            t1 = time.perf_counter()
            mse, nll = starnet_loss(model, x, y[idx], w[idx])
            loss = mse + nll
            t2 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t3 = time.perf_counter()
            opt.step()
            t4 = time.perf_counter()
            c4 = time.process_time()
            if b >= 2:
                for k, v in zip(times, (t4 - t0, c4 - c0, t1 - t0, t2 - t1, t3 - t2,
                                        t4 - t3)):
                    times[k].append(v)
    return {k: float(np.median(v)) for k, v in times.items()}


def profile_step(n_pix: int, data, y, w, batch: int, steps: int, threads: int,
                 top: int = 14) -> dict:
    """Per-operator self CPU time of the book's training step (torch.profiler), ms per step.

    The operators with the largest self time, their share of the step's total, and the load
    average at the start and end.
    """
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = book_model(n_pix)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    rng = np.random.default_rng(0)

    def step():
        idx = np.sort(rng.choice(len(data), batch, replace=False))
        training_step(model, opt, torch.from_numpy(data.rows(idx)), y[idx], w[idx])

    la = load()
    with fast_allocation(), torch_threads(threads):
        for _ in range(2):
            step()
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        wall = (time.perf_counter() - t0) / steps
    ev = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in ev)
    ev.sort(key=lambda e: -e.self_cpu_time_total)
    out = {"ms_per_step_profiled": round(1e3 * wall, 1), "load_before": la, "load_after": load(),
           "self_ms_per_step": {e.key: round(e.self_cpu_time_total / 1e3 / steps, 2)
                                for e in ev[:top]},
           "self_share": {e.key: round(e.self_cpu_time_total / total, 3) for e in ev[:top]}}
    print(f"profile, {threads} thread(s): {out['ms_per_step_profiled']} ms/step; "
          + ", ".join(f"{k} {v:.0%}" for k, v in list(out["self_share"].items())[:8]), flush=True)
    return out



def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-field", type=int, default=238_400, help="synthetic survey size")
    p.add_argument("--survey", type=Path, default=None,
                   help="an existing survey folder to use instead (e.g. one generated with "
                        "paper_scale_params()); default: the chapter's survey for --n-field")
    p.add_argument("--batches", type=int, default=20, help="batches per variant and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the variants")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-epoch", action="store_true", help="skip the full epochs")
    p.add_argument("--profile-steps", type=int, default=5,
                   help="steps of the book's loop under torch.profiler, with one and with two "
                        "threads (0: no profile)")
    p.add_argument("--epoch-modalities", nargs="+", default=None,
                   help="modalities to time a full epoch of (default: all of the source's)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's choice, one per core)")
    p.add_argument("--epoch-precisions", nargs="+", default=[TrainConfig().precision],
                   choices=PRECISIONS, help="precisions of the full epochs (default: the "
                   "book's, TrainConfig().precision)")
    p.add_argument("--epoch-threads", type=int, default=None,
                   help="torch threads of the full epochs (default: as --threads)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    source = (source_from_survey(load_survey(args.survey)) if args.survey is not None
              else starnet_source(n_field=args.n_field))
    split = starnet_split(source, seed=0)
    res = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "torch": torch.__version__, "threads": torch.get_num_threads()},
           "source": source.key, "split": split.sizes, "batch_size": args.batch_size,
           "load_start": load()}
    gemm = gemm_gflops(4096, 5, library="torch")
    res["gemm_gflops"] = round(gemm, 1)
    print(f"float32 GEMM: {gemm:.0f} GFLOP/s (load {load()})")

    data = {m: starnet_data(source, split, m) for m in source.modalities}
    y_train = source.labels(split.train, "true")
    scaler = LabelScaler.fit(y_train)
    z = scaler.transform(y_train)
    y = torch.from_numpy(np.nan_to_num(z))
    w = torch.from_numpy(np.isfinite(z).astype(np.float32))

    # 2. variants, interleaved
    train = data["apogee"]["train"]
    n_pix = train.n_pixels
    fl_batch = flops_per_spectrum(n_pix) * args.batch_size
    book = "book (channels-last block + fused AdamW + heap reuse)"
    book1 = "book, one thread"
    variants = {  # name: (model, fused AdamW, heap reuse, threads)
        "plain": (lambda: PlainStarNet(n_pix), False, False, None),
        "plain + fused AdamW + heap reuse": (lambda: PlainStarNet(n_pix), True, True, None),
        book: (lambda: book_model(n_pix), True, True, None),
        "book, chunks of 32 spectra":
            (lambda: book_model(n_pix, chunk=32), True, True, None),
        book1: (lambda: book_model(n_pix), True, True, 1),
        "book, one thread, chunks of 32 spectra":
            (lambda: book_model(n_pix, chunk=32), True, True, 1),
        "book, FC layers in bfloat16 (opt-in precision='bf16-fc')":
            (lambda: book_model(n_pix, precision="bf16-fc"), True, True, None),
        "book, FC layers in bfloat16, one thread":
            (lambda: book_model(n_pix, precision="bf16-fc"), True, True, 1),
    }
    per_batch = {k: [] for k in variants}
    phases = {k: [] for k in variants}
    loads = []
    for r in range(args.rounds):
        for name, (make, fused, heap, threads) in variants.items():
            torch.manual_seed(0)
            t = time_batches(make(), fused, heap, train, y, w, args.batches, args.batch_size,
                             seed=r, threads=threads)
            per_batch[name].append(t["total"])
            phases[name].append(t)
            loads.append(load())
            print(f"round {r}: {name}: {t['total'] * 1e3:.1f} ms/batch, CPU "
                  f"{t['cpu'] * 1e3:.1f} ms ("
                  + ", ".join(f"{k} {t[k] * 1e3:.1f}" for k in PHASES)
                  + f") load {loads[-1]}", flush=True)
    n_train = len(train)
    res["variants"] = {k: {"ms_per_batch": [round(1e3 * s, 1) for s in v],
                           "median_ms_per_batch": round(1e3 * float(np.median(v)), 1),
                           "cpu_ms_per_batch": [round(1e3 * t["cpu"], 1) for t in phases[k]],
                           "median_phase_ms": {ph: round(1e3 * float(np.median(
                               [t[ph] for t in phases[k]])), 1) for ph in PHASES},
                           "projected_epoch_s": round(float(np.median(v)) * n_train
                                                      / args.batch_size, 1),
                           "fraction_of_gemm": round(fl_batch / float(np.median(v)) / 1e9
                                                     / gemm, 3)}
                       for k, v in per_batch.items()}
    base = np.median(per_batch["plain"])
    res["speedup_vs_plain"] = {k: round(float(base / np.median(v)), 2)
                               for k, v in per_batch.items()}
    ref = per_batch["plain + fused AdamW + heap reuse"]
    res["block_speedup_vs_plain_fused_heap"] = round(float(np.median(ref)
                                                           / np.median(per_batch[book])), 2)
    # per round, so that a change of load between rounds cancels
    res["book_ratio_per_round"] = {k: [round(a / b, 2) for a, b in zip(v, per_batch[book])]
                                   for k, v in per_batch.items() if k != book}
    # one thread: the same step in chunks of 32 against the default 16, wall clock and CPU time
    res["one_thread_chunk32_over_chunk16_per_round"] = {
        "wall": [round(a / b, 3) for a, b in zip(per_batch["book, one thread, chunks of 32 spectra"],
                                                 per_batch[book1])],
        "cpu": [round(a["cpu"] / b["cpu"], 3) for a, b in zip(
            phases["book, one thread, chunks of 32 spectra"], phases[book1])]}
    res["variant_loads"] = loads

    # 2b. where a step of the book's loop goes: per-op self time, one and two threads
    if args.profile_steps > 0:
        res["profile"] = {f"{t} thread{'s' * (t > 1)}": profile_step(
            n_pix, train, y, w, args.batch_size, args.profile_steps, t) for t in (1, 2)}

    # 3. full epochs with the book's code
    if not args.no_epoch:
        res["epochs"] = {}
        runs = [(mod, precision) for mod in data for precision in args.epoch_precisions
                if args.epoch_modalities is None or mod in args.epoch_modalities]
        for mod, precision in runs:
            sets = data[mod]
            tr = sets["train"]
            torch.manual_seed(0)
            model = StarNet(tr.n_pixels, precision=precision)
            model.set_input_scaling(tr.fill, 1.0 / centred_rms(tr))   # as train_starnet
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
            gen = torch.Generator().manual_seed(0)
            ids_pos = {i: k for k, i in enumerate(split.train)}
            order = np.array([ids_pos[i] for i in tr.ids])
            la = load()
            with fast_allocation(), torch_threads(args.epoch_threads):
                threads_used = torch.get_num_threads()
                t = time.perf_counter()
                train_epoch(model, opt, tr, y[order], w[order], args.batch_size, gen)
                epoch_s = time.perf_counter() - t
                model.eval()
                t = time.perf_counter()
                with torch.inference_mode():
                    for s in range(0, len(sets["val"]), 1024):
                        model.predict_with_logvar(torch.from_numpy(
                            np.array(sets["val"].flux[s:s + 1024])))
                val_s = time.perf_counter() - t
            fl = flops_per_spectrum(tr.n_pixels)
            n_used = (len(tr) // args.batch_size) * args.batch_size
            rate = fl * n_used / epoch_s / 1e9
            name = f"{mod}, {precision}"
            res["epochs"][name] = {"n_spectra": len(tr), "n_pixels": tr.n_pixels,
                                   "precision": precision,
                                   "epoch_s": round(epoch_s, 2),
                                   "spectra_per_s": round(n_used / epoch_s, 1),
                                   "validation_pass_s": round(val_s, 2),
                                   "gflop_per_spectrum": round(fl / 1e9, 4),
                                   "achieved_gflops": round(rate, 1),
                                   "fraction_of_gemm": round(rate / gemm, 3),
                                   "threads": threads_used,
                                   "load_before": la, "load_after": load()}
            print(f"{name}: one epoch over {len(tr):,} spectra in {epoch_s:.1f} s "
                  f"({n_used / epoch_s:.0f} spectra/s, {rate:.0f} GFLOP/s = "
                  f"{rate / gemm:.0%} of GEMM; load {la} -> {load()})", flush=True)
        default = f"apogee, {TrainConfig().precision}"
        if default in res["epochs"]:
            apo = res["epochs"][default]
            res.update({"precision": TrainConfig().precision, "epoch_s": apo["epoch_s"],
                        "spectra_per_s": apo["spectra_per_s"],
                        "fraction_of_gemm": apo["fraction_of_gemm"]})
        for precision in PRECISIONS:
            if f"apogee, {precision}" in res["epochs"]:
                res[f"epoch_s_{precision.replace('-', '_')}"] = \
                    res["epochs"][f"apogee, {precision}"]["epoch_s"]
    res["load_end"] = load()
    res["total_s"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
