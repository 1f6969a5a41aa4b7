"""Training data of a property head: another training split, the property on every crystal."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from generators.data import load_split
from generators.trainer import load_training_data, validate_train_config


def test_training_split_with_the_property(data_dir: Path) -> None:
    """perov_5's train split has no heat_ref; ``train_split: val`` trains on val with y set."""
    cfg = validate_train_config({"train_split": "val", "val_split": None})
    train, val, errors = load_training_data(
        "perov_5", cfg, limit=5, data_dir=data_dir, progress=False, property_name="heat_ref"
    )
    assert not errors and val == []
    records = load_split("perov_5", "val", data_dir=data_dir, limit=5, progress=False).records
    assert [d.material_id for d in train] == [r.material_id for r in records]
    assert [float(d.y) for d in train] == pytest.approx([r.properties["heat_ref"] for r in records])
    plain, _, _ = load_training_data(
        "perov_5",
        validate_train_config({}),
        limit=2,
        data_dir=data_dir,
        progress=False,
        property_name="heat_ref",
    )
    source = load_split("perov_5", "train", data_dir=data_dir, limit=2, progress=False).records
    for item, record in zip(plain, source, strict=True):  # NaN where the record has no value
        expected = record.properties.get("heat_ref", math.nan)
        assert float(item.y) == pytest.approx(expected, nan_ok=True)
