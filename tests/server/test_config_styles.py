"""--styles: style adapters named on the command line or in SDXS_STYLES."""

from __future__ import annotations

import pytest

from server.config import parse_config


def test_styles_parse_into_named_adapters():
    config = parse_config([], env={"SDXS_STYLES": "anime=IDKiro/sdxs-512-dreamshaper-anime, ink=/models/ink"})
    assert config.style_adapters() == {"anime": "IDKiro/sdxs-512-dreamshaper-anime", "ink": "/models/ink"}


def test_no_styles_by_default():
    assert parse_config([], env={}).style_adapters() == {}


@pytest.mark.parametrize("bad", ["anime", "=x", "anime="])
def test_malformed_styles_name_the_entry(bad):
    with pytest.raises(ValueError, match="--styles"):
        parse_config(["--styles", bad], env={}).style_adapters()
