"""How the champion was trained (its recipe), read back from its lineage tags and run params, so the
candidate can be trained the same way."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Any

from include.model_ci.errors import CiError


@dataclass
class Recipe:
    """How a model version was trained, from its lineage tags and run params."""

    data_rev: str
    data_md5: str
    validation_id: str
    family: str
    params: dict[str, Any]
    seed: int
    holdout_frac: float
    val_frac: float
    window_days: float
    search: bool
    code_sha: str

    def describe(self) -> str:
        win = f", window {self.window_days:g} days" if self.window_days else ""
        return (f"{self.family} {json.dumps(self.params, sort_keys=True)} on data rev {self.data_rev[:10]}{win}, "
                f"seed {self.seed}, fractions {self.holdout_frac:g}/{self.val_frac:g}")


def param_value(text: str) -> Any:
    """An MLflow param (always a string) back to the Python value it was logged from."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def recipe_of(mv, run) -> Recipe:
    """The recipe of a registered version; a clear error when a piece is not recorded."""
    tags, params = mv.tags or {}, run.data.params
    rev = tags.get("data_rev") or params.get("data_rev")
    if not rev or rev == "unknown":
        raise CiError(f"{mv.name} v{mv.version} records no data_rev: its data cannot be reloaded")
    try:
        return Recipe(
            data_rev=rev, data_md5=tags.get("data_md5", "unknown"), validation_id=tags.get("validation_id", "unknown"),
            family=tags.get("family") or params["family"],
            params={k[3:]: param_value(v) for k, v in params.items() if k.startswith("hp.")},
            seed=int(params["seed"]), holdout_frac=float(params["holdout_frac"]), val_frac=float(params["val_frac"]),
            window_days=float(tags.get("selection_window_days") or 0),
            search=str(params.get("search", "False")) == "True", code_sha=tags.get("code_sha", "unknown"),
        )
    except (KeyError, ValueError) as err:
        raise CiError(f"{mv.name} v{mv.version} (run {mv.run_id}) has an incomplete training recipe: {err}") from err
