"""Write docs/api.md, the API reference, from the public docstrings.

python docs/make_api.py           # rewrite docs/api.md
python docs/make_api.py --check   # exit 1 if docs/api.md is stale
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import sktune
import sktune.accelerate

OUT = Path(__file__).with_name("api.md")
# Public methods of the estimators worth a section of their own (skorch's
# documented hooks are skorch's).
METHODS = (
    "fit",
    "partial_fit",
    "predict",
    "predict_proba",
    "score",
    "embed",
    "describe",
    "merge_adapters",
    "save_pretrained",
    "from_pretrained",
)


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def _section(title: str, obj, level: str = "##") -> list[str]:
    doc = inspect.getdoc(obj) or "(no docstring)"
    return [f"{level} `{title}{_signature(obj)}`", "", "```text", doc, "```", ""]


def render() -> str:
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings by `docs/make_api.py`; do not edit by hand.",
        "",
    ]
    objects = [(name, getattr(sktune, name)) for name in sktune.__all__]
    objects += [
        (f"accelerate.{name}", getattr(sktune.accelerate, name))
        for name in sktune.accelerate.__all__
    ]
    for name, obj in objects:
        lines += _section(f"sktune.{name}", obj)
        if name in ("FineTuneClassifier", "FineTuneRegressor"):
            for method in METHODS:
                member = getattr(obj, method, None)
                if member is not None and (inspect.getdoc(member) or "").strip():
                    lines += _section(f"{name}.{method}", member, level="###")
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python docs/make_api.py")
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
