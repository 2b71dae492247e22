"""Two domains of plain text for language-model runs over domains in sequence (continual
learning), beside the State of the Union speeches: software licences and Python source code.
Each build writes one .txt file per document into a directory, read with txt_unit="document"
(or "paragraph") like the speeches.

Licences: spdx-license-list's `package/spdx-full.json` ({id: {name, url, osiApproved,
licenseText}}, 727 licences, CC0-1.0). Trap: 40 texts are exact duplicates (the `-only` /
`-or-later` / `+` variants of one licence), so each distinct text is written once, under the
first of its ids in sorted order.

Code: the .py files of a pinned pure-Python wheel (sympy 1.4, BSD), one document per module,
named by its dotted path; test modules are left out (repetitive fixtures, not library code).
"""

from __future__ import annotations

import json
from pathlib import Path

LICENCES_DATA = Path("package") / "spdx-full.json"
LICENCES_OUT = "licenses"
CODE_PACKAGE = "sympy"
CODE_OUT = "code"


def distinct_licences(spdx: dict) -> dict[str, str]:
    """{id: text} for each distinct non-empty licence text, under its first id (sorted)."""
    seen, out = set(), {}
    for spdx_id in sorted(spdx):
        text = (spdx[spdx_id].get("licenseText") or "").strip()
        if text and text not in seen:
            seen.add(text)
            out[spdx_id] = text
    return out


def build_licences(tree: Path) -> None:
    """Write `tree`/licenses/<id>.txt from the unpacked npm package under `tree`."""
    spdx = json.loads((tree / LICENCES_DATA).read_text(encoding="utf-8"))
    out = tree / LICENCES_OUT
    out.mkdir(exist_ok=True)
    for spdx_id, text in distinct_licences(spdx).items():
        (out / f"{spdx_id}.txt").write_text(text + "\n", encoding="utf-8")


def build_code(tree: Path) -> None:
    """Write `tree`/code/<dotted.module>.txt for each non-test module of the installed wheel."""
    package = tree / CODE_PACKAGE
    out = tree / CODE_OUT
    out.mkdir(exist_ok=True)
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(tree)
        if "tests" in relative.parts or path.name.startswith("test_"):
            continue
        text = path.read_text(encoding="utf-8")
        if text.strip():
            name = ".".join(relative.with_suffix("").parts)
            (out / f"{name}.txt").write_text(text, encoding="utf-8")
