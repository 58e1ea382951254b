"""The example of book/sweeps.md: chapter 6's knee against the truth, over surveys and seeds.

Book: book/sweeps.md ("A real example").

Runs exactly the command printed on the page (COMMAND below), then writes from its results
table ``book/figures/sweep_truth.csv`` (the columns shown on the page),
``book/figures/sweep_truth_summary.md`` (the hit count the page quotes, computed here) and
``book/figures/sweep_truth.png``. Rerunning it skips the grid points that already finished
(the sweep is resumable).

Run:  .venv/bin/python book/figures/sweep_truth.py
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

#: The command shown on the page (run from the repository's top folder).
COMMAND = """python -m helpers.sweep notebooks/06_dimensionality.md
  -p n_latent_alt 3 5 7 --seeds 43 --seed-name survey_seed_alt
  -p n_field 20000 -p n_field_alt 20000 -p K_values "[10, 30]" -p K_table 30
  -p n_runs 3 -p n_runs_k 2 -p n_train_values "[5, 11, 21]" -p n_subsets 5 -p n_boot 500
  --jobs 2 --out .cache/sweeps/06_truth"""

COLUMNS = ["n_latent_alt", "survey_seed_alt", "status", "seconds", "n_field_alt_giants", "knee_alt",
           "knee_alt_low", "knee_alt_high", "hit_alt", "why_alt"]


def main() -> int:
    """Run the sweep, copy its table next to this script, write the summary and the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    from helpers.paths import cache_dir
    from helpers.plotting import OKABE_ITO, use_book_style

    argv = shlex.split(COMMAND.replace("\n", " "))
    argv[0] = sys.executable
    out = cache_dir("sweeps", "06_truth")
    argv[argv.index("--out") + 1] = str(out)
    code = subprocess.call(argv, cwd=REPO)
    table = pd.read_csv(out / "results.csv")
    table[COLUMNS].sort_values(["n_latent_alt", "survey_seed_alt"]).to_csv(
        HERE / "sweep_truth.csv", index=False, float_format="%.4f")
    ok = table[table.status == "ok"]
    hits = ok.groupby("n_latent_alt").hit_alt.agg(["sum", "count"])
    default = ok[["n_latent", "knee", "knee_low", "knee_high"]].drop_duplicates()
    lines = [f"In this run, {int(ok.hit_alt.sum())} of {len(ok)} knees of the second surveys lie within "
             f"one of the true number of latent dimensions ("
             + "; ".join(f"n_latent = {n}: {int(r['sum'])} of {int(r['count'])}" for n, r in hits.iterrows())
             + ")."]
    for _, d in default.iterrows():
        lines.append(f"The default survey of these runs (n_latent = {int(d.n_latent)}, 20,000 generated "
                     f"stars) has its knee at N = {int(d.knee)} (interval {int(d.knee_low)}-{int(d.knee_high)}).")
    if len(ok) < len(table):
        lines.append(f"{len(table) - len(ok)} grid points failed; see `status` in the table.")
    (HERE / "sweep_truth_summary.md").write_text(" ".join(lines) + "\n")

    use_book_style()
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    lim = [ok.n_latent_alt.min() - 1.5, max(ok.n_latent_alt.max(), ok.knee_alt_high.max()) + 1.5]
    ax.fill_between(lim, [lim[0] - 1, lim[1] - 1], [lim[0] + 1, lim[1] + 1], color="0.9", lw=0,
                    label="truth $\\pm$ 1")
    ax.plot(lim, lim, color="0.5", lw=1, ls=":")
    offsets = {s: 0.15 * (i - 1) for i, s in enumerate(sorted(ok.survey_seed_alt.unique()))}
    for colour, (s, part) in zip(OKABE_ITO, ok.groupby("survey_seed_alt")):
        x = part.n_latent_alt + offsets[s]
        ax.errorbar(x, part.knee_alt, yerr=[part.knee_alt - part.knee_alt_low,
                                            part.knee_alt_high - part.knee_alt],
                    fmt="o", color=colour, capsize=2, label=f"survey seed {s}")
    ax.set(xlabel="latent chemical dimensions of the survey", ylabel="knee of Table 1 (68 % interval)",
           xlim=lim, ylim=lim)
    ax.set_xticks(np.arange(int(lim[0]) + 1, int(lim[1]) + 1))
    ax.legend(fontsize=8, loc="upper left")
    fig.savefig(HERE / "sweep_truth.png", dpi=150)
    print(table[COLUMNS].to_string(index=False))
    print((HERE / "sweep_truth_summary.md").read_text())
    return code


if __name__ == "__main__":
    raise SystemExit(main())
