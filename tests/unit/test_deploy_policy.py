"""The deploy policy (include/deploy_policy.py) and the canary's latency figure (include/canary.py)."""

from __future__ import annotations

import json

import pytest

from include.canary import Traffic
from include.deploy_policy import load_policy


def test_file_then_installation_then_run_override(tmp_path, monkeypatch):
    (tmp_path / "deploy_d.yaml").write_text("canary:\n  weight: 0.2\n  max_seconds: 50\n")
    monkeypatch.setenv("MLOPS_DEPLOY_POLICY", json.dumps({"canary": {"max_seconds": 20}}))
    p = load_policy("d", {"canary": {"weight": 0.5}}, policies_dir=tmp_path)
    assert (p.canary.weight, p.canary.max_seconds, p.canary.min_requests) == (0.5, 20, 200)
    assert p.analysis.max_score_ks is None  # a retrain is meant to score differently: not judged by default


@pytest.mark.parametrize("override, message", [
    ({"canary": {"wieght": 0.5}}, "the run's policy Param: unknown key 'canary.wieght' (known: ['max_seconds', "),
    ({"canary": {"weight": 1.5}}, "canary.weight: Input should be less than 1, got 1.5"),
    ({"rollback_window": {"seconds": -1}}, "rollback_window.seconds: Input should be greater than or equal to 0, got -1"),
])
def test_a_bad_override_names_the_key(tmp_path, monkeypatch, override, message):
    monkeypatch.delenv("MLOPS_DEPLOY_POLICY", raising=False)
    with pytest.raises(ValueError) as err:
        load_policy("d", override, policies_dir=tmp_path)
    assert message in str(err.value)


def test_shipped_policies_parse():
    from include.catalog import dataset_names

    for dataset in dataset_names():
        load_policy(dataset)


def test_p99_is_interpolated_inside_its_bucket_like_histogram_quantile():
    # 99 of 100 requests are at or below 0.1 s; the 99th lies between 0.05 (98) and 0.1 (99.5)
    t = Traffic(100, 0, {0.01: 10, 0.025: 50, 0.05: 98, 0.1: 99.5, 0.25: 100, float("inf"): 100})
    assert t.p99_ms() == pytest.approx(50 + 50 * (1 / 1.5))
    assert Traffic().p99_ms() is None
    # a window is the difference of two scrapes
    later = Traffic(150, 3, {0.1: 140, float("inf"): 150}) - Traffic(100, 1, {0.1: 95, float("inf"): 100})
    assert (later.requests, later.errors, later.error_rate) == (50, 2, 0.04)
