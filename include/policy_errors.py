"""One way to say what is wrong with a policy file: the file, each wrong key, what it should be and
what it was (``x.yaml: significance.n_boot: Input should be greater than or equal to 100, got 10``),
from a pydantic ``ValidationError``. Unknown keys list the known ones: a typo is the usual cause."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from pydantic import ValidationError

_UNKNOWN = ("extra_forbidden", "unexpected_keyword_argument")


def describe(err: ValidationError, where: str, *, known: Iterable[str] | Mapping[str, Iterable[str]] = (),
             key_name: Callable[[str], str] = str) -> str:
    """``"<where>: <problem>; <problem>"``. ``known``: the keys of the file, or per section (``""``
    the top level); ``key_name`` maps a model field to the file's key."""
    problems = []
    for e in err.errors():
        loc = ".".join([key_name(str(e["loc"][0])), *map(str, e["loc"][1:])]) if e["loc"] else ""
        if e["type"] in _UNKNOWN:
            section = ".".join(map(str, e["loc"][:-1]))
            keys = known.get(section, ()) if isinstance(known, Mapping) else (known if not section else ())
            problems.append(f"unknown key {loc!r}" + (f" (known: {sorted(keys)})" if keys else ""))
        elif e["type"] == "value_error" and not loc:  # a check across fields: its message says it all
            problems.append(str(e["ctx"]["error"]))
        else:
            problems.append(f"{loc + ': ' if loc else ''}{e['msg']}, got {e['input']!r}")
    return f"{where}: " + "; ".join(problems)
