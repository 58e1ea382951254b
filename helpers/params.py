"""Checking a chapter's parameters in one call, with one clear error.

Book: {ref}`page-intro`

Every chapter has one ``parameters`` cell that papermill may change; right after it, one call
checks them all::

    check_parameters(
        n_teff=integer(n_teff, min=2),
        teff_min=number(teff_min, min=3000.0, below=teff_max),
        cluster_name=one_of(cluster_name, cluster_names),
    )

Each helper (:func:`integer`, :func:`number`, :func:`integers`, :func:`one_of`,
:func:`optional`, :func:`condition`) describes what a parameter must be; the value it is given
is the chapter's variable, so bounds may depend on other parameters or on the data.
:func:`check_parameters` raises a single ``ValueError`` that names every bad parameter, what
was expected and what was given, e.g.::

    ValueError: bad parameter: n_teff must be an integer >= 2, got 1

Integers must be integers (``5``, not ``5.0``): a chapter uses them as counts and indices.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

__all__ = ["Check", "check_parameters", "integer", "number", "integers", "one_of", "optional",
           "condition"]


@dataclass(frozen=True)
class Check:
    """What one parameter must be, and whether its value is.

    Book: {ref}`page-intro`

    Attributes
    ----------
    value : object
        The value given.
    ok : bool
        Whether it is acceptable.
    expected : str
        What it must be, completing "NAME must be ...".
    """

    value: object
    ok: bool
    expected: str


def _is_int(v) -> bool:
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v) -> bool:
    return (isinstance(v, (numbers.Real, np.floating, np.integer))
            and not isinstance(v, (bool, np.bool_)) and bool(np.isfinite(v)))


def _bounds(v, min, max, above, below) -> tuple[bool, str]:
    """Whether ``v`` lies within the bounds, and the bounds in words."""
    ok, words = True, []
    for bound, op, text in ((min, np.greater_equal, ">="), (above, np.greater, ">"),
                            (max, np.less_equal, "<="), (below, np.less, "<")):
        if bound is not None:
            words.append(f"{text} {bound:g}" if isinstance(bound, float) else f"{text} {bound}")
            ok = ok and bool(op(v, bound))
    return ok, " and ".join(words)


def integer(value, *, min=None, max=None, above=None, below=None) -> Check:
    """An integer (not a bool, not 5.0), optionally within bounds.

    Book: {ref}`page-intro`

    Parameters
    ----------
    value : object
    min, max : int, optional
        Inclusive bounds.
    above, below : int, optional
        Exclusive bounds.

    Returns
    -------
    Check
    """
    ok = _is_int(value)
    inside, words = _bounds(value, min, max, above, below) if ok else (False, "")
    if not words:
        words = _bounds(0, min, max, above, below)[1]
    return Check(value, ok and inside, "an integer" + (f" {words}" if words else ""))


def number(value, *, min=None, max=None, above=None, below=None) -> Check:
    """A finite real number, optionally within bounds.

    Book: {ref}`page-intro`

    Parameters
    ----------
    value : object
    min, max : float, optional
        Inclusive bounds.
    above, below : float, optional
        Exclusive bounds.

    Returns
    -------
    Check
    """
    ok = _is_real(value)
    inside, _ = _bounds(value, min, max, above, below) if ok else (False, "")
    words = _bounds(0, min, max, above, below)[1]
    return Check(value, ok and inside, "a finite number" + (f" {words}" if words else ""))


def integers(values, *, min=None, max=None, above=None, below=None, among=None) -> Check:
    """A non-empty list of integers, each within bounds and (optionally) among given values.

    Book: {ref}`page-intro`

    Parameters
    ----------
    values : object
    min, max, above, below : int, optional
        Bounds every entry must respect.
    among : sequence, optional
        Values every entry must be one of.

    Returns
    -------
    Check
    """
    words = _bounds(0, min, max, above, below)[1]
    expected = "a non-empty list of integers" + (f" {words}" if words else "")
    if among is not None:
        expected += f", each one of {sorted(among)}"
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        return Check(values, False, expected)
    items = list(values)
    ok = bool(items) and all(_is_int(v) and _bounds(v, min, max, above, below)[0] for v in items)
    if ok and among is not None:
        ok = set(items) <= set(among)
    return Check(values, ok, expected)


def one_of(value, choices, *, tolerance=None) -> Check:
    """One of some values (within ``tolerance`` of one, for numbers).

    Book: {ref}`page-intro`

    Parameters
    ----------
    value : object
    choices : sequence
    tolerance : float, optional
        For numbers: how close to a choice counts as that choice.

    Returns
    -------
    Check
    """
    choices = list(choices)
    if tolerance is None:
        ok = value in choices
        shown = choices if len(choices) <= 25 else choices[:25] + ["..."]
        return Check(value, ok, f"one of {shown}")
    ok = _is_real(value) and bool(np.any(np.abs(np.asarray(choices, float) - value) <= tolerance))
    return Check(value, ok, f"within {tolerance:g} of one of {len(choices)} values "
                            f"({min(choices):g} ... {max(choices):g})")


def optional(check, value, **kwargs) -> Check:
    """``None``, or what ``check(value, **kwargs)`` accepts (e.g. ``optional(integer, n_fit,
    min=100)``).

    Book: {ref}`page-intro`

    Returns
    -------
    Check
    """
    if value is None:
        return Check(value, True, "")
    inner = check(value, **kwargs)
    return Check(value, inner.ok, f"None or {inner.expected}")


def condition(value, ok: bool, expected: str) -> Check:
    """Any other rule: ``ok`` says whether ``value`` satisfies what ``expected`` describes.

    Book: {ref}`page-intro`

    Returns
    -------
    Check
    """
    return Check(value, bool(ok), expected)


def check_parameters(**checks: Check) -> None:
    """Check a chapter's parameters; one ``ValueError`` names every bad one.

    Book: {ref}`page-intro`

    Parameters
    ----------
    **checks : Check
        One per parameter, by its name in the chapter's ``parameters`` cell, made by
        :func:`integer`, :func:`number`, :func:`integers`, :func:`one_of`, :func:`optional`
        or :func:`condition`.

    Raises
    ------
    ValueError
        ``bad parameter: NAME must be EXPECTED, got VALUE`` (one line per bad parameter).
    TypeError
        A keyword that is not a :class:`Check` (a chapter bug, not a bad parameter).
    """
    bad = []
    for name, check in checks.items():
        if not isinstance(check, Check):
            raise TypeError(f"check_parameters({name}=...) needs a Check (integer(...), number(...), "
                            f"...), got {type(check).__name__}")
        if not check.ok:
            bad.append(f"{name} must be {check.expected}, got {check.value!r}")
    if bad:
        head = "bad parameter: " if len(bad) == 1 else "bad parameters:\n  "
        raise ValueError(head + "\n  ".join(bad))
