"""helpers.params: one call checks a chapter's parameters; one error names every bad one."""

import numpy as np
import pytest

from helpers.params import (check_parameters, condition, integer, integers, number, one_of,
                            optional)


def test_good_parameters_pass():
    check_parameters(n=integer(5, min=2), x=number(np.float64(0.5), above=0, max=1),
                     ks=integers([5, 10], among=[5, 10, 15]), name=one_of("a", ["a", "b"]),
                     line=one_of(16270.32, [15000.0, 16270.318], tolerance=0.01),
                     n_fit=optional(integer, None, min=100), k=integer(np.int64(3), below=4),
                     rule=condition(3, True, "odd"))


@pytest.mark.parametrize("check, message", [
    (integer(1, min=2), "n must be an integer >= 2, got 1"),
    (integer(5.0, min=2), "n must be an integer >= 2, got 5.0"),
    (integer(True), "n must be an integer, got True"),
    (number(float("nan"), above=0), "n must be a finite number > 0, got nan"),
    (number(3.0, min=1.0, below=2.5), "n must be a finite number >= 1 and < 2.5, got 3.0"),
    (number("3", above=0), "n must be a finite number > 0, got '3'"),
    (integers([], min=1), "n must be a non-empty list of integers >= 1, got []"),
    (integers([5, 7], among=[5, 10]), "n must be a non-empty list of integers, each one of [5, 10], got [5, 7]"),
    (integers(5), "n must be a non-empty list of integers, got 5"),
    (one_of("x", ["a", "b"]), "n must be one of ['a', 'b'], got 'x'"),
    (optional(integer, 50, min=100), "n must be None or an integer >= 100, got 50"),
    (condition(7, False, "even"), "n must be even, got 7"),
])
def test_one_clear_error_naming_the_parameter(check, message):
    with pytest.raises(ValueError) as err:
        check_parameters(n=check)
    assert str(err.value) == "bad parameter: " + message


def test_every_bad_parameter_is_named_at_once():
    with pytest.raises(ValueError) as err:
        check_parameters(a=integer(1, min=2), b=integer(3, min=2), c=number(-1.0, above=0))
    text = str(err.value)
    assert text.startswith("bad parameters:") and "a must be" in text and "c must be" in text
    assert "b must be" not in text


def test_a_check_that_is_not_a_check_is_a_chapter_bug():
    with pytest.raises(TypeError, match="needs a Check"):
        check_parameters(n=5)
