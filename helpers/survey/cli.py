"""Command line of the book's survey data: ``python -m helpers.survey <command> ...``.

Book: {ref}`sec-survey-real`

Commands
--------
generate
    Write a synthetic survey (allStar, aspcapStar, OCCAM files, spectra cache, JWST twins,
    truth); every :class:`helpers.survey.params.SurveyParams` field is an option::

        python -m helpers.survey generate --n-field 20000 --seed 42 --out /data/survey

cache
    Build the spectra cache of a selection of stars from a real DR16 or DR17 SAS mirror
    (``--zarr``: also its Zarr copy, ``cache/dr16/spectra.zarr``, for Dask workers)::

        python -m helpers.survey cache --apogee-root /data/sas --release dr16 --out cache/dr16

zarr
    Write the Zarr copy of an existing spectra cache (or of a survey's)::

        python -m helpers.survey zarr cache/dr16

Further commands register themselves with :func:`add_command`; run
``python -m helpers.survey --help`` or ``... <command> --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from helpers.apogee.allstar import read_allstar
from helpers.apogee.cache_builder import build_spectra_cache
from helpers.apogee.cache_format import SpectraCacheError
from helpers.apogee.cache_zarr import ZARR_CHUNK_ROWS, write_zarr_cache
from helpers.apogee.fits_io import ApogeeFormatError
from helpers.apogee.sas import allstar_path
from helpers.rsca.selection import passes_field_cuts
from helpers.survey.generate import generate_survey
from helpers.survey.params import SurveyParams, paper_scale_params

__all__ = ["build_parser", "main", "add_command", "cmd_cache", "cmd_zarr",
           "add_generate_arguments", "run_generate"]

# name -> (configure(subparser), run(args) -> int, one-line help)
_COMMANDS: dict[str, tuple[Callable, Callable, str]] = {}


def add_command(name: str, help: str):
    """Register a subcommand: decorate ``configure(parser)``, which returns ``run(args)``.

    Example (how the synthetic survey adds ``generate``)::

        @add_command("generate", help="write a synthetic survey")
        def _configure(p):
            p.add_argument("--out", required=True, help="...")
            return run_generate   # run_generate(args) -> exit status

    Parameters
    ----------
    name : str
        Subcommand name.
    help : str
        One-line description shown by ``--help``.

    Book: {ref}`sec-survey-real`
    """
    def deco(configure: Callable[[argparse.ArgumentParser], Callable]):
        _COMMANDS[name] = (configure, None, help)
        return configure
    return deco


# ---------------------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------------------

SELECTIONS = ("rsca", "all")


def _configure_cache(p: argparse.ArgumentParser):
    p.add_argument("--apogee-root", required=True, type=Path, metavar="DIR",
                   help="directory that contains dr16/ or dr17/ of an SDSS SAS mirror "
                        "(the level above dr16/, e.g. /data/sas); aspcapStar files are "
                        "looked up under it in the SAS layout")
    p.add_argument("--release", required=True, choices=("dr16", "dr17"),
                   help="data release of the mirror: dr16 (aspcap r12/l33) or dr17 "
                        "(aspcap dr17/synspec_rev1)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="cache directory to create; replaced atomically if it already "
                        "holds a cache built from different inputs, reused if the same")
    p.add_argument("--allstar", type=Path, default=None, metavar="FILE",
                   help="allStar FITS file to use instead of the one in the mirror "
                        "(default: the release's allStar file under --apogee-root)")
    p.add_argument("--selection", choices=SELECTIONS, default="rsca",
                   help="which stars: 'rsca' = 4000<TEFF<5000 K, 1.5<LOGG<3, STAR_BAD "
                        "unset, all 21 RSCA abundances measured (default); 'all' = every "
                        "allStar row")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out stars whose aspcapStar file is missing, unreadable or "
                        "malformed, and list them with the reason in the manifest (default: "
                        "stop at the first bad file and write nothing)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="parallel reader processes (default: number of CPUs, at most 8; "
                        "1 = read in the main process)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="use only the first N selected stars (for a quick trial)")
    p.add_argument("--force", action="store_true",
                   help="rebuild even if --out already holds a cache of the same inputs")
    p.add_argument("--no-progress", action="store_true",
                   help="do not show the progress bar (it is also off when $CI is set or TQDM_DISABLE=1)")
    p.add_argument("--zarr", action="store_true",
                   help="also write the cache's Zarr copy, OUT/spectra.zarr, which the "
                        "workers of a Dask cluster read (the memory map stays the default)")
    return cmd_cache


def cmd_cache(args: argparse.Namespace) -> int:
    """Run ``cache``: read allStar, select stars, build the spectra cache, print a summary.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options of the ``cache`` subcommand.

    Returns
    -------
    int
        Exit status (0 on success).

    Book: {ref}`sec-survey-real`
    """
    allstar = args.allstar or allstar_path(args.apogee_root, args.release)
    print(f"reading {allstar}", file=sys.stderr)
    df = read_allstar(allstar)
    if args.selection == "rsca":
        df = df.loc[passes_field_cuts(df)].reset_index(drop=True)
    if args.limit is not None:
        if args.limit < 1:
            raise SystemExit(f"--limit must be >= 1, got {args.limit}")
        df = df.iloc[: args.limit].reset_index(drop=True)
    print(f"{len(df)} stars selected ({args.selection})", file=sys.stderr)
    cache = build_spectra_cache(df, args.out, apogee_root=args.apogee_root,
                                release=args.release, skip_bad=args.skip_bad,
                                n_jobs=args.jobs, progress=not args.no_progress,
                                key_extra={"selection": args.selection,
                                           "limit": args.limit,
                                           "allstar": str(Path(allstar).resolve())},
                                force=args.force)
    summary = {"cache": str(cache.path), "n_stars": len(cache),
               "n_skipped": len(cache.skipped), "key": cache.manifest["key"]}
    if args.zarr:
        summary["zarr"] = str(write_zarr_cache(cache, progress=not args.no_progress))
    print(json.dumps(summary))
    for s in cache.skipped[:20]:
        print(f"skipped {s['apogee_id']}: {s['reason']}", file=sys.stderr)
    if len(cache.skipped) > 20:
        print(f"... and {len(cache.skipped) - 20} more (see {cache.path}/manifest.json)",
              file=sys.stderr)
    return 0


add_command("cache", help="build the spectra cache from a real DR16/DR17 SAS mirror")(
    _configure_cache)


# ---------------------------------------------------------------------------------------
# zarr
# ---------------------------------------------------------------------------------------

def _configure_zarr(p: argparse.ArgumentParser):
    p.add_argument("source", type=Path, metavar="DIR",
                   help="a spectra cache folder, or a synthetic survey folder (its cache/)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="the Zarr store to write (default: <cache>/spectra.zarr)")
    p.add_argument("--chunk-rows", type=int, default=ZARR_CHUNK_ROWS, metavar="N",
                   help=f"stars per Zarr chunk (default {ZARR_CHUNK_ROWS})")
    p.add_argument("--force", action="store_true",
                   help="rewrite even if the store already holds this cache's copy")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return cmd_zarr


def cmd_zarr(args: argparse.Namespace) -> int:
    """Run ``zarr``: write the Zarr copy of a spectra cache and print its folder.

    Book: {ref}`sec-survey-files`
    """
    src = args.source
    if (src / "survey.json").is_file():
        src = src / "cache"
    if args.chunk_rows < 1:
        raise SystemExit(f"--chunk-rows must be >= 1, got {args.chunk_rows}")
    print(write_zarr_cache(src, args.out, chunk_rows=args.chunk_rows,
                           progress=not args.no_progress, force=args.force))
    return 0


add_command("zarr", help="write the Zarr copy of a spectra cache (read by Dask workers)")(
    _configure_zarr)


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with one subparser per registered command.

    Returns
    -------
    argparse.ArgumentParser

    Book: {ref}`sec-survey-real`
    """
    parser = argparse.ArgumentParser(
        prog="python -m helpers.survey",
        description="Survey data of 'Measuring stars with machine learning'.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (configure, _, help_text) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        run = configure(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the chosen command.

    Errors from bad input (missing or malformed files) are printed as one line naming
    the file and the problem, with exit status 2.

    Parameters
    ----------
    argv : sequence of str, optional

    Returns
    -------
    int
        Exit status.

    Book: {ref}`sec-survey-real`
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ApogeeFormatError, SpectraCacheError, FileNotFoundError, PermissionError,
            IsADirectoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------
# generate (the synthetic survey)
# ---------------------------------------------------------------------------------------

def add_generate_arguments(parser) -> None:
    """Add ``--n-field``, ``--seed``, ``--out`` and one option per SurveyParams field.

    Book: {ref}`ch-survey`
    """
    parser.add_argument("--out", default=None,
                        help="output folder (default: <cache>/surveys/<key>)")
    parser.add_argument("--paper-scale", action="store_true",
                        help="start from paper_scale_params() (238,400 field stars, 19,000 JWST)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild even if the survey exists")
    parser.add_argument("--zarr", action="store_true",
                        help="also write the spectra cache's Zarr copy, cache/spectra.zarr "
                             "(read by the workers of a Dask cluster)")
    for f in dataclasses.fields(SurveyParams):
        opt = "--" + f.name.replace("_", "-")
        hlp = f"SurveyParams.{f.name} (default {f.default})"
        if f.name == "jwst_gap":
            parser.add_argument(opt, nargs="+", default=None, metavar="GAP",
                                help=f"{hlp}: 'msa', 'none', or START END in A")
        elif f.name == "n_jwst":
            parser.add_argument(opt, type=int, default=None,
                                help=f"{hlp}: twins; default 8%% of n_field")
        elif f.type in ("tuple", "tuple | None") or isinstance(f.default, tuple):
            parser.add_argument(opt, type=float, nargs=2, default=None, metavar=("LO", "HI"),
                                help=hlp)
        elif isinstance(f.default, bool):
            parser.add_argument(opt, type=lambda s: s.lower() in ("1", "true", "yes"),
                                default=None, metavar="BOOL", help=hlp)
        elif isinstance(f.default, int):
            parser.add_argument(opt, type=int, default=None, help=hlp)
        elif isinstance(f.default, float):
            parser.add_argument(opt, type=float, default=None, help=hlp)
        else:
            parser.add_argument(opt, type=str, default=None, help=hlp)


def run_generate(args) -> int:
    """Run the ``generate`` command from parsed arguments; prints the survey folder.

    Book: {ref}`ch-survey`
    """
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(SurveyParams)
          if getattr(args, f.name, None) is not None}
    try:
        if "jwst_gap" in kw:
            kw["jwst_gap"] = _parse_gap(kw["jwst_gap"])
        params = paper_scale_params(**kw) if args.paper_scale else SurveyParams(**kw)
        out = generate_survey(params, args.out, progress=not args.no_progress,
                              overwrite=args.overwrite, zarr=args.zarr)
    except (ValueError, TypeError, OSError) as exc:  # bad input: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


def _parse_gap(words):
    """``--jwst-gap`` words: 'msa', 'none', or two wavelengths (A)."""
    if len(words) == 1 and words[0].lower() in ("msa", "none"):
        return None if words[0].lower() == "none" else "msa"
    if len(words) == 2:
        try:
            return float(words[0]), float(words[1])
        except ValueError:
            pass
    raise ValueError(f"--jwst-gap {' '.join(words)}: expected 'msa', 'none' or two "
                     f"wavelengths in A")


def _configure_generate(p: argparse.ArgumentParser):
    add_generate_arguments(p)
    return run_generate


add_command("generate", help="write a synthetic survey (allStar, aspcapStar, OCCAM, cache, "
                             "JWST, truth)")(_configure_generate)
