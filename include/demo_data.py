"""Seeded generator of daily e-commerce session batches (the `sessions` spec) with drift knobs.

The purchase label comes from a fixed logistic model of the features, so a model can learn it
and the loop can be shown without any download:

* ``covariate_drift`` (0..1) shifts the feature distributions (more mobile/social traffic, longer
  sessions, bigger discounts) while the label mechanism stays the same;
* ``concept_drift`` (0..1) changes the label mechanism itself (discounts stop working, cart items
  matter less), so a model trained before the drift loses accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

DEVICES = ["mobile", "desktop", "tablet"]
COUNTRIES = ["US", "GB", "DE", "FR", "IN", "BR", "other"]
CHANNELS = ["organic", "paid", "email", "social", "direct"]


def make_batch(
    day: int = 0,
    n_rows: int = 5_000,
    *,
    seed: int = 42,
    covariate_drift: float = 0.0,
    concept_drift: float = 0.0,
    start: str = "2026-01-01",
) -> pd.DataFrame:
    """One day of sessions. The same (day, seed, knobs) always gives the same frame."""
    rng = np.random.default_rng([seed, day])
    d = float(covariate_drift)
    device_p = np.array([0.55 + 0.3 * d, 0.35 - 0.25 * d, 0.10 - 0.05 * d])
    channel_p = np.array([0.35 - 0.2 * d, 0.25, 0.15 - 0.05 * d, 0.15 + 0.25 * d, 0.10])
    device = rng.choice(DEVICES, n_rows, p=device_p / device_p.sum())
    country = rng.choice(COUNTRIES, n_rows, p=[0.3, 0.12, 0.12, 0.1, 0.16, 0.1, 0.1])
    channel = rng.choice(CHANNELS, n_rows, p=channel_p / channel_p.sum())
    returning = (rng.random(n_rows) < 0.35 - 0.15 * d).astype("int64")
    pages = np.clip(rng.poisson(6 + 6 * d, n_rows) + 1, 1, 500).astype("int64")
    seconds = np.clip(rng.gamma(2.0, 90 * (1 + 1.5 * d), n_rows) + pages * 15, 0, 86_400)
    cart = np.clip(rng.poisson(0.8 + 0.4 * returning + 0.08 * pages), 0, 100).astype("int64")
    discount = np.clip(rng.exponential(8 + 20 * d, n_rows), 0, 90)
    price = np.clip(rng.lognormal(4.0, 1.0, n_rows), 0, 20_000)
    price[rng.random(n_rows) < 0.02] = np.nan  # a few sessions never viewed a product

    c = float(concept_drift)
    logit = (
        -3.2
        + (1.1 - 0.9 * c) * np.log1p(cart)
        + 0.9 * returning
        + 0.035 * pages
        + (0.04 - 0.06 * c) * discount
        + 0.5 * (device == "desktop")
        + np.where(channel == "email", 0.6, 0.0)
        - np.where(channel == "social", 0.5 - 1.2 * c, 0.0)
        - 0.15 * np.log1p(np.nan_to_num(price, nan=50.0)) * (1 - c)
    )
    purchased = (rng.random(n_rows) < 1 / (1 + np.exp(-logit))).astype("int64")

    t0 = pd.Timestamp(start, tz="UTC") + pd.Timedelta(days=day)
    ts = t0 + pd.to_timedelta(np.sort(rng.integers(0, 86_400, n_rows)), unit="s")
    return pd.DataFrame(
        {
            "session_id": [f"d{day:04d}-s{seed}-{i:07d}" for i in range(n_rows)],
            "ts": ts,
            "device": device,
            "country": country,
            "channel": channel,
            "returning": returning,
            "pages_viewed": pages,
            "session_seconds": seconds.round(2),
            "cart_items": cart,
            "discount_pct": discount.round(2),
            "price_viewed": np.round(price, 2),
            "purchased": purchased,
        }
    )


def as_requests(batch: pd.DataFrame) -> list[dict]:
    """The batch's sessions as /predict instances: features and key, no label or timestamp,
    missing values as JSON null."""
    rows = batch.drop(columns=["purchased", "ts"]).astype(object)
    return rows.where(rows.notna(), None).to_dict(orient="records")


def write_batch(df: pd.DataFrame, path: Path) -> Path:
    """Write a batch as the landing zone expects it: CSV (gzip when the name ends in .gz)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%SZ")
    return path
