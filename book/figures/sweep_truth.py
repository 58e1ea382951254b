"""The example of book/sweeps.md: chapter 6 over a grid of n_latent_alt, and its plot.

Book: book/sweeps.md ("A real example").

Runs exactly the command printed on the page (COMMAND below), then copies the tidy table
to ``book/figures/sweep_truth.csv`` and draws ``book/figures/sweep_truth.png``.
Rerunning it skips the grid points that already finished (the sweep is resumable).

Run:  .venv/bin/python book/figures/sweep_truth.py
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

#: The command shown on the page (run from the repository's top folder).
COMMAND = """python -m helpers.sweep notebooks/06_dimensionality.md
  -p n_latent_alt 2 3 4 5 6
  -p n_field 20000 -p n_field_alt 8000 -p n_fit 3000 -p K_values "[5, 10, 15]"
  -p K_dedicated "[10]" -p K_table 15 -p top_n_values "[1, 2, 3, 4, 5, 6]" -p n_repeats 1
  -p n_train_values "[3, 11, 20]" -p n_subsets 5 -p K_for_subsets "[15]" -p n_boot 50
  --jobs 2 --out .cache/sweeps/06_truth"""


def main() -> int:
    """Run the sweep, copy its table next to this script and draw the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from helpers.plotting import OKABE_ITO, use_book_style

    argv = shlex.split(COMMAND.replace("\n", " "))
    argv[0] = sys.executable
    code = subprocess.call(argv, cwd=REPO)
    table = pd.read_csv(REPO / ".cache" / "sweeps" / "06_truth" / "results.csv")
    keep = ["n_latent_alt", "status", "seconds", "alt_plateau_N"] + \
        [c for c in table.columns if c.startswith("alt_rate_top")]
    table[keep].to_csv(HERE / "sweep_truth.csv", index=False, float_format="%.4f")
    ok = table[table.status == "ok"].sort_values("n_latent_alt")

    use_book_style()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 3.3))
    tops = sorted((c for c in table.columns if c.startswith("alt_rate_top") and c[12:].isdigit()),
                  key=lambda c: int(c[12:]))
    n = [int(c[12:]) for c in tops]
    for colour, (_, row) in zip(OKABE_ITO, ok.iterrows()):
        left.plot(n, row[tops].to_numpy(float), "o-", color=colour, label=f"n_latent = {row.n_latent_alt}")
        left.axvline(row.n_latent_alt, color=colour, ls="--", lw=0.8)
    left.set(xlabel="RSCA dimensions kept N", ylabel="doppelganger rate (CV)", ylim=(0, None))
    left.legend()
    right.plot(ok.n_latent_alt, ok.alt_plateau_N, "o", color=OKABE_ITO[0], label="where Table 1 levels off")
    lim = [1.5, max(ok.n_latent_alt.max(), ok.alt_plateau_N.max()) + 0.5]
    right.plot(lim, lim, color="0.5", lw=1, ls=":", label="true number")
    right.set(xlabel="chemical dimensions of the survey (n_latent)",
              ylabel="N within 15 % of the best rate", xlim=lim, ylim=lim)
    right.legend(loc="upper left")
    fig.savefig(HERE / "sweep_truth.png", dpi=150)
    print(table[keep].to_string(index=False))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
