"""``dftloop train --set section.key=value`` parsing."""

from __future__ import annotations

import pytest

from flows.commands.train import parse_overrides


def test_set_values_are_nested_and_read_as_yaml() -> None:
    found = parse_overrides(
        ["train.max_train_crystals=null", "train.lr=1e-3", "model.decoder.type=gemnet_t"]
    )
    assert found == {
        "train": {"max_train_crystals": None, "lr": 1e-3},
        "model": {"decoder": {"type": "gemnet_t"}},
    }


@pytest.mark.parametrize("bad", ["train.max_epochs", "=3", "train..lr=1"])
def test_malformed_assignment_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=r"section\.key=value"):
        parse_overrides([bad])
