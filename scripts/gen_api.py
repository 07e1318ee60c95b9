"""Write docs/api.md from the docstrings of the public names (run after a build)."""

from __future__ import annotations

import inspect
from pathlib import Path

import netpoll
import netpoll.adapters
import netpoll.mux
import netpoll.protocols


def signature(obj: object) -> str:
    try:
        return str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "(...)"


def doc(obj: object) -> str:
    text = inspect.cleandoc(getattr(obj, "__doc__", None) or "").strip()
    first, _, rest = text.partition("\n")
    if "(" in first and first.split("(")[0].split(".")[-1] == getattr(obj, "__name__", "?"):
        text = rest.strip()      # Cython's embedded signature line
    return " ".join(text.split("\n\n")[0].split()) + (
        "\n\n  " + "\n  ".join(text.split("\n\n", 1)[1].splitlines())
        if "\n\n" in text else "")


def main() -> None:
    out = ["# API reference", "",
           "Generated from the docstrings by `scripts/gen_api.py`. The contract these follow is",
           "the project's API specification; see also [the handler model](handler-model.md).",
           ""]
    for modname, mod in (("netpoll", netpoll), ("netpoll.mux", netpoll.mux),
                         ("netpoll.adapters", netpoll.adapters),
                         ("netpoll.protocols", netpoll.protocols)):
        out += [f"## `{modname}`", ""]
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isclass(obj):
                out += [f"### class `{name}{signature(obj)}`", "", doc(obj), ""]
                if issubclass(obj, BaseException):
                    bases = ", ".join(b.__name__ for b in obj.__bases__)
                    out += [f"Bases: {bases}", ""]
                    continue
                for attr, member in sorted(vars(obj).items()):
                    if attr.startswith("_") or not doc(member):
                        continue
                    if callable(member):
                        out += [f"* `{attr}{signature(member)}` — {doc(member)}"]
                    else:
                        out += [f"* `{attr}` — {doc(member)}"]
                out.append("")
            elif callable(obj):
                out += [f"### `{name}{signature(obj)}`", "", doc(obj), ""]
    path = Path(__file__).resolve().parent.parent / "docs" / "api.md"
    path.write_text("\n".join(out).rstrip() + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
