"""Seeded generator of daily food-delivery batches (the `deliveries` spec): a REGRESSION dataset.

The second demo dataset, so the loop is shown on two task types side by side; like
``include.demo_data`` it needs no download. The target, ``delivery_minutes``, comes from a fixed
mechanism a model can learn (kitchen preparation + travel at a speed set by the courier, the
weather and the rush hour + a handover per item + noise), with interactions a linear model misses
(snow slows bikes far more than cars; rush hour only slows motor traffic):

* ``covariate_drift`` (0..1) shifts the inputs: longer trips, more rain and snow, more evening
  orders, more car couriers, bigger orders. The mechanism stays the same.
* ``concept_drift`` (0..1) changes the mechanism: the city gets congested (every courier is slower,
  rush hour hits harder) and kitchens get slower, so a model trained before it underestimates.

Batch writing is the demo's own (:func:`include.demo_data.write_batch`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from include.demo_data import write_batch

__all__ = ["COURIERS", "REGIONS", "TARGET", "WEATHER", "as_requests", "make_batch", "write_batch"]

TARGET = "delivery_minutes"
REGIONS = ["center", "north", "south", "east", "west"]
WEATHER = ["clear", "cloudy", "rain", "snow"]
COURIERS = ["bike", "scooter", "car"]

# km/h in clear weather outside the rush hour
_SPEED = {"bike": 16.0, "scooter": 24.0, "car": 28.0}
# speed factor per weather, per courier: snow is a disaster on two wheels, a nuisance in a car
_WEATHER_FACTOR = {
    "bike": {"clear": 1.0, "cloudy": 0.97, "rain": 0.8, "snow": 0.5},
    "scooter": {"clear": 1.0, "cloudy": 0.98, "rain": 0.85, "snow": 0.6},
    "car": {"clear": 1.0, "cloudy": 1.0, "rain": 0.9, "snow": 0.8},
}
# the city centre is slow for cars and fast for bikes; the outskirts are the other way round
_REGION_FACTOR = {
    "bike": {"center": 1.1, "north": 0.95, "south": 0.95, "east": 0.9, "west": 1.0},
    "scooter": {"center": 1.0, "north": 1.0, "south": 1.0, "east": 0.95, "west": 1.0},
    "car": {"center": 0.7, "north": 1.05, "south": 1.05, "east": 1.1, "west": 1.0},
}


def _lookup(table: dict[str, dict[str, float]], outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    out = np.empty(len(outer))
    for o, row in table.items():
        for i, v in row.items():
            out[(outer == o) & (inner == i)] = v
    return out


def make_batch(
    day: int = 0,
    n_rows: int = 5_000,
    *,
    seed: int = 42,
    covariate_drift: float = 0.0,
    concept_drift: float = 0.0,
    start: str = "2026-01-01",
) -> pd.DataFrame:
    """One day of deliveries. The same (day, seed, knobs) always gives the same frame."""
    # a different stream from the sessions generator for the same (seed, day)
    rng = np.random.default_rng([seed, day, 2])
    d = float(covariate_drift)

    # order times: a lunch and a dinner peak; drift moves orders into the evening
    lunch = rng.normal(12.5, 1.2, n_rows)
    dinner = rng.normal(19.5 + 1.0 * d, 1.5, n_rows)
    hour_f = np.where(rng.random(n_rows) < 0.45 - 0.25 * d, lunch, dinner) % 24
    seconds = np.sort((hour_f * 3600).astype("int64"))
    t0 = pd.Timestamp(start, tz="UTC") + pd.Timedelta(days=day)
    ts = t0 + pd.to_timedelta(seconds, unit="s")
    hour = (seconds // 3600).astype("int64")

    region = rng.choice(REGIONS, n_rows, p=[0.3, 0.2, 0.2, 0.15, 0.15])
    weather_p = np.array([0.5 - 0.3 * d, 0.25, 0.18 + 0.17 * d, 0.07 + 0.13 * d])
    weather = rng.choice(WEATHER, n_rows, p=weather_p / weather_p.sum())
    courier_p = np.array([0.4 - 0.2 * d, 0.35, 0.25 + 0.2 * d])
    courier = rng.choice(COURIERS, n_rows, p=courier_p / courier_p.sum())
    distance = np.clip(rng.gamma(2.2, 1.5 * (1 + 0.8 * d), n_rows), 0.2, 40.0)
    items = np.clip(rng.poisson(2.0 + 1.5 * d, n_rows) + 1, 1, 50).astype("int64")
    prep = np.clip(rng.gamma(4.0, 3.0, n_rows) + 0.8 * items, 2.0, 120.0)
    temperature = np.round(rng.normal(8.0, 6.0, n_rows) - 6.0 * (weather == "snow"), 1)
    temperature[rng.random(n_rows) < 0.03] = np.nan  # a flaky weather feed

    c = float(concept_drift)
    rush = ((hour >= 11) & (hour <= 13)) | ((hour >= 18) & (hour <= 20))
    motor = courier != "bike"
    speed = (
        np.vectorize(_SPEED.get)(courier)
        * _lookup(_WEATHER_FACTOR, courier, weather)
        * _lookup(_REGION_FACTOR, courier, region)
        * np.where(rush & motor, 0.75 - 0.2 * c, 1.0)
        * (1.0 - 0.3 * c)
    )
    minutes = (
        prep * (1.0 + 0.4 * c)
        + distance / speed * 60.0
        + 1.2 * items
        + 3.0
        + rng.normal(0.0, 3.0, n_rows)
    )
    minutes = np.clip(minutes, 3.0, 300.0)

    return pd.DataFrame(
        {
            "delivery_id": [f"d{day:04d}-k{seed}-{i:07d}" for i in range(n_rows)],
            "ts": ts,
            "region": region,
            "weather": weather,
            "courier": courier,
            "hour": hour,
            "distance_km": distance.round(3),
            "items": items,
            "prep_minutes": prep.round(1),
            "temperature_c": temperature,
            TARGET: minutes.round(1),
        }
    )


def as_requests(batch: pd.DataFrame) -> list[dict]:
    """The batch's deliveries as /predict instances: features and key, no target or timestamp,
    missing values as JSON null."""
    rows = batch.drop(columns=[TARGET, "ts"]).astype(object)
    return rows.where(rows.notna(), None).to_dict(orient="records")
