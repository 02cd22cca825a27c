"""Automated canary analysis and the post-promotion rollback window, on live traffic.

Both read only what the servers already publish: each model server's Prometheus ``/metrics``
(request counts by status, latency histograms; scraped directly, not through the edge) and the
prediction log (the scores each version served). Deltas between two scrapes give the window's
figures, so a server's earlier traffic never counts.

* ``analyze``: while the edge splits traffic (include/edge/ ``start_canary``), wait until the
  canary has answered the policy's ``min_requests`` (and ``min_seconds`` passed), or
  ``max_seconds``; then compare canary vs champion: 5xx rate, p99 latency, and the distribution of
  served scores (two-sample Kolmogorov-Smirnov statistic). A canary that errors past the limit, or
  dies, fails at once instead of waiting for the window's end.
* ``watch``: after promotion, the new champion's ``/ready`` and 5xx rate are watched for the
  policy's rollback window; a breach is returned as the reason to roll back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from include.deploy_policy import DeployPolicy

log = logging.getLogger(__name__)

SCORING_PATHS = ("predict", "/infer", "invocations")
POLL_S = 0.5


@dataclass
class Traffic:
    """Scoring requests of one server between two scrapes (or since it started)."""

    requests: int = 0
    errors: int = 0  # 5xx
    buckets: dict[float, float] = field(default_factory=dict)  # latency histogram: le -> cumulative count

    def __sub__(self, other: Traffic) -> Traffic:
        return Traffic(self.requests - other.requests, self.errors - other.errors,
                       {le: n - other.buckets.get(le, 0.0) for le, n in self.buckets.items()})

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p99_ms(self) -> float | None:
        """The 99th percentile, interpolated linearly inside its histogram bucket as Prometheus'
        ``histogram_quantile`` does (None without requests)."""
        total = max(self.buckets.values(), default=0.0)
        if total <= 0:
            return None
        rank, lower, below = 0.99 * total, 0.0, 0.0
        for le in sorted(self.buckets):
            count = self.buckets[le]
            if count >= rank:
                if le == float("inf"):
                    return lower * 1000.0
                inside = count - below
                return (lower + (le - lower) * ((rank - below) / inside if inside else 1.0)) * 1000.0
            lower, below = le, count
        return None


def _is_scoring(endpoint: str) -> bool:
    return any(p in endpoint for p in SCORING_PATHS)


def scrape(url: str, timeout: float = 2.0) -> Traffic:
    """The server's scoring traffic so far, from its ``/metrics``."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url.rstrip("/") + "/metrics", timeout=timeout).raise_for_status().text
    t = Traffic()
    for family in text_string_to_metric_families(text):
        if family.name == "mlops_serving_requests":
            for sample in family.samples:
                if sample.name.endswith("_total") and _is_scoring(sample.labels.get("endpoint", "")):
                    t.requests += int(sample.value)
                    if sample.labels.get("status", "").startswith("5"):
                        t.errors += int(sample.value)
        elif family.name == "mlops_serving_request_duration_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket") and _is_scoring(sample.labels.get("endpoint", "")):
                    le = float(sample.labels["le"])
                    t.buckets[le] = t.buckets.get(le, 0.0) + sample.value
    return t


def snapshot(instance: dict) -> dict:
    """A baseline to diff against later (JSON-safe: it travels in XCom with the release)."""
    t = scrape(instance["url"])
    return {"requests": t.requests, "errors": t.errors, "buckets": {str(k): v for k, v in t.buckets.items()}}


def _from_snapshot(snap: dict) -> Traffic:
    return Traffic(int(snap["requests"]), int(snap["errors"]), {float(k): v for k, v in snap["buckets"].items()})


def _score_ks(model: str, canary_version: str, champion_version: str, since: datetime,
              min_rows: int) -> dict:
    """KS statistic of the scores each version served since ``since`` (from the prediction log)."""
    from scipy.stats import ks_2samp

    from include.config import settings
    from include.serving.predlog import read_predictions

    df = read_predictions(settings().predictions_dir, model, since=since,
                          model_version=[canary_version, champion_version],
                          columns=["model_version", "prediction"])
    a = df.loc[df["model_version"] == str(canary_version), "prediction"].dropna().to_numpy(float)
    b = df.loc[df["model_version"] == str(champion_version), "prediction"].dropna().to_numpy(float)
    if min(a.size, b.size) < min_rows:
        return {"judged": False, "canary_rows": int(a.size), "champion_rows": int(b.size),
                "note": f"fewer than {min_rows} logged scores on a side: score distribution not judged"}
    res = ks_2samp(a, b)
    return {"judged": True, "canary_rows": int(a.size), "champion_rows": int(b.size),
            "ks": float(res.statistic), "p_value": float(res.pvalue)}


@dataclass
class Verdict:
    passed: bool
    reasons: list[str]
    canary: dict
    champion: dict
    scores: dict
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def _figures(t: Traffic) -> dict:
    return {"requests": t.requests, "errors_5xx": t.errors, "error_rate": round(t.error_rate, 4),
            "p99_ms": t.p99_ms()}


def analyze(release: dict, policy: DeployPolicy, *, alive=lambda: True, clock=time.monotonic,
            sleep=time.sleep) -> Verdict:
    """Wait for the canary's traffic, then judge it against the champion (see the module doc).

    ``release``: what ``deployment.start_release`` returned for a canary phase: ``instance`` (the
    canary), ``previous`` (the champion), ``baseline`` snapshots of both and ``started`` (ISO time).
    """
    c, a = policy.canary, policy.analysis
    canary_url, champion_url = release["instance"]["url"], release["previous"]["url"]
    base_canary, base_champion = _from_snapshot(release["baseline"]["canary"]), \
        _from_snapshot(release["baseline"]["champion"])
    t0, last_note = clock(), 0.0
    while True:
        elapsed = clock() - t0
        if not alive():
            return Verdict(False, [f"the canary server died during the analysis ({elapsed:.0f}s in)"],
                           {}, {}, {}, elapsed)
        seen = scrape(canary_url) - base_canary
        if seen.requests >= a.score_min_rows and seen.error_rate > a.max_error_rate:
            break  # already failing with enough evidence: do not serve errors until max_seconds
        if seen.requests >= c.min_requests and elapsed >= c.min_seconds:
            break
        if elapsed >= c.max_seconds:
            break
        if elapsed - last_note >= 10:
            log.warning("canary: %d of %d requests after %.0fs (judged by %.0fs at the latest)",
                        seen.requests, c.min_requests, elapsed, c.max_seconds)
            last_note = elapsed
        sleep(POLL_S)
    canary, champion = seen, scrape(champion_url) - base_champion
    elapsed = clock() - t0
    reasons: list[str] = []
    if canary.requests < c.min_requests:
        msg = (f"only {canary.requests} canary requests in {elapsed:.0f}s (policy: {c.min_requests}); "
               f"on_insufficient_traffic={c.on_insufficient_traffic}")
        if c.on_insufficient_traffic == "rollback":
            reasons.append(msg)
        else:
            log.warning("canary: %s: judging what there is", msg)
    if canary.requests and canary.error_rate > a.max_error_rate:
        reasons.append(f"canary 5xx rate {canary.error_rate:.1%} ({canary.errors}/{canary.requests}) "
                       f"> {a.max_error_rate:.1%}")
    p99_c, p99_k = canary.p99_ms(), champion.p99_ms()
    if p99_c is not None and p99_k is not None and p99_c > a.p99_floor_ms \
            and p99_c > a.max_p99_ratio * max(p99_k, 1e-9):
        reasons.append(f"canary p99 {p99_c:.0f} ms > {a.max_p99_ratio}x the champion's {p99_k:.0f} ms")
    # the prediction log is flushed every few seconds: give the last scores a moment to land
    scores = _score_ks(release["instance"]["model"], release["instance"]["version"],
                       release["previous"]["version"], datetime.fromisoformat(release["started"]),
                       a.score_min_rows)
    if a.max_score_ks is None:
        scores = {**scores, "judged": False, "note": "max_score_ks unset in the policy: reported, not judged"}
    elif scores.get("judged") and scores["ks"] > a.max_score_ks:
        reasons.append(f"canary scores differ from the champion's: KS {scores['ks']:.3f} > {a.max_score_ks} "
                       f"({scores['canary_rows']} vs {scores['champion_rows']} rows)")
    return Verdict(not reasons, reasons, _figures(canary), _figures(champion), scores, round(elapsed, 1))


def watch(instance: dict, policy: DeployPolicy, *, alive=lambda: True, clock=time.monotonic,
          sleep=time.sleep) -> dict:
    """Watch the new champion for the rollback window: {"breach": reason or None, ...figures}."""
    import httpx

    w = policy.rollback_window
    t0, failed, base = clock(), 0, None
    try:
        base = scrape(instance["url"])
    except httpx.HTTPError:
        pass
    seen = Traffic()
    while clock() - t0 < w.seconds:
        ok = False
        if alive():
            try:
                ok = httpx.get(instance["url"].rstrip("/") + "/ready", timeout=1.0).status_code == 200
                if ok and base is not None:
                    seen = scrape(instance["url"]) - base
            except httpx.HTTPError:
                ok = False
        failed = 0 if ok else failed + 1
        elapsed = clock() - t0
        if failed >= w.max_failed_health_checks:
            return {"breach": f"v{instance['version']} failed {failed} health checks in a row "
                              f"{elapsed:.1f}s into the rollback window", **_figures(seen), "seconds": elapsed}
        if seen.requests >= w.min_requests and seen.error_rate > w.max_error_rate:
            return {"breach": f"v{instance['version']} 5xx rate {seen.error_rate:.1%} "
                              f"({seen.errors}/{seen.requests}) > {w.max_error_rate:.1%} in the rollback window",
                    **_figures(seen), "seconds": elapsed}
        sleep(POLL_S)
    return {"breach": None, **_figures(seen), "seconds": round(clock() - t0, 1)}


def now_iso() -> str:
    return datetime.now(UTC).isoformat()
