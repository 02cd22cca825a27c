"""The draft as YAML: the decisions and notes as a comment block on top, then the spec, one line
per column."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from include.spec_draft.draft import Draft


def render_yaml(draft: Draft) -> str:
    import yaml

    class _Flow(dict):
        pass

    class _Dumper(yaml.SafeDumper):
        pass

    _Dumper.add_representer(_Flow, lambda d, data: d.represent_mapping("tag:yaml.org,2002:map", data.items(),
                                                                          flow_style=True))

    def dump(obj) -> str:
        return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=10_000,
                         allow_unicode=True)

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = [f"# Drafted by `mlops-spec draft {draft.source.name}` on {stamp}. Review every line before the",
            "# first ingest: ranges, category sets and nullability describe the rows seen, not the rules.",
            "#", *(f"# {d}" for d in draft.decisions), *(f"# NOTE: {n}" for n in draft.notes), ""]
    top = {k: v for k, v in draft.spec.items() if k != "columns"}
    cols = {c: _Flow(body) for c, body in draft.spec["columns"].items()}
    return "\n".join(head) + dump(top) + dump({"columns": cols})
