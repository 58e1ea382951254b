"""The package's one rule for progress bars (helpers.progress)."""

import importlib

import pytest

from helpers.progress import progress_enabled


@pytest.mark.parametrize("env, shown", [
    ({}, True),
    ({"TQDM_DISABLE": "0"}, True),
    ({"TQDM_DISABLE": ""}, True),
    ({"TQDM_DISABLE": "1"}, False),
    ({"CI": "1"}, False),
    ({"CI": "true", "TQDM_DISABLE": "0"}, False),
])
def test_bar_shown_unless_ci_or_tqdm_disable(monkeypatch, env, shown):
    for name in ("CI", "TQDM_DISABLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert progress_enabled(True) is shown
    assert progress_enabled(False) is False


@pytest.mark.parametrize("module", [
    "helpers.survey.generate", "helpers.apogee.cache_builder", "helpers.apogee.cache_zarr",
    "helpers.rsca.representation", "helpers.starnet.train", "helpers.starclip.train",
    "helpers.starclip.clusters",
])
def test_every_long_loop_asks_the_one_rule(module):
    assert importlib.import_module(module).progress_enabled is progress_enabled
