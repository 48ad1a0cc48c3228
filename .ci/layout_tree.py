"""Lay the package out as it is installed (backends/, firmware_models/ and calibration/ inside
phasegrad_hw/) under DEST, one symlink per source file, so static checkers that read files
(mypy, import-linter) resolve every ``phasegrad_hw.*`` module from this checkout.

    python .ci/layout_tree.py DEST
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(dest: Path) -> None:
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = cfg.get("package-dir", {})
    for pkg in cfg["packages"]:
        # the source folder: the longest mapped prefix, the rest of the dotted name below it
        base = max((k for k in mapping if pkg == k or pkg.startswith(k + ".")), key=len)
        src = REPO / mapping[base] / Path(*pkg[len(base) + 1 :].split(".") if pkg != base else ())
        out = dest / Path(*pkg.split("."))
        out.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.suffix in (".py", ".typed") and f.is_file():
                (out / f.name).symlink_to(f)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
