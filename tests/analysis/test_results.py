from __future__ import annotations

import json
import math

import numpy as np
import pytest

from analysis.results import MetricResult, read_metrics_json, write_metrics_json


def test_metric_result_round_trips_through_json(tmp_path):
    result = MetricResult(
        "match_rate",
        np.float64(0.25),
        {"stol": 0.5, "tolerances": (0.5, 10)},
        {"n_matched": np.int64(1), "n_targets": 4},
        "fraction matched",
        [{"id": "mp-1", "reason": "nan_value"}],
    )
    doc = json.loads(result.to_json())
    assert doc["value"] == 0.25
    assert doc["counts"] == {"n_matched": 1, "n_targets": 4}
    assert doc["definition"]["tolerances"] == [0.5, 10]
    path = write_metrics_json({"csp.match_rate": result}, tmp_path / "m" / "metrics.json", {"x": 1})
    back = read_metrics_json(path)["csp.match_rate"]
    assert back.value == 0.25 and back.errors == [{"id": "mp-1", "reason": "nan_value"}]
    assert json.loads(path.read_text())["metadata"] == {"x": 1}


def test_non_finite_values_are_written_as_null():
    doc = MetricResult("rmse", math.nan, {"x": float("inf")}).to_dict()
    assert doc["value"] is None and doc["definition"]["x"] is None


def test_read_rejects_other_files(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a dftloop-metrics"):
        read_metrics_json(path)
