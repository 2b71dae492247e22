"""The domain-text assets (spdx-licenses, python-code): each builder on a small tree shaped like
its package, checking the traps it handles (duplicate licence texts; test modules left out)."""

import json

from ftjax.assets.domain_text import (
    CODE_OUT,
    LICENCES_DATA,
    LICENCES_OUT,
    build_code,
    build_licences,
    distinct_licences,
)


def test_each_distinct_licence_text_is_one_document_under_its_first_id(tmp_path):
    spdx = {"GPL-2.0-or-later": {"licenseText": "GNU GPL 2\n"},
            "GPL-2.0-only": {"licenseText": "GNU GPL 2"},
            "MIT": {"licenseText": "Permission is hereby granted"},
            "Empty": {"licenseText": "  "}}
    assert distinct_licences(spdx) == {"GPL-2.0-only": "GNU GPL 2",
                                       "MIT": "Permission is hereby granted"}
    (tmp_path / LICENCES_DATA).parent.mkdir(parents=True)
    (tmp_path / LICENCES_DATA).write_text(json.dumps(spdx))
    build_licences(tmp_path)
    files = sorted(p.name for p in (tmp_path / LICENCES_OUT).iterdir())
    assert files == ["GPL-2.0-only.txt", "MIT.txt"]


def test_every_non_test_module_is_one_document_named_by_its_dotted_path(tmp_path):
    package = tmp_path / "sympy"
    for relative, text in {"__init__.py": "from .core import *\n",
                           "core/basic.py": "class Basic:\n    pass\n",
                           "core/tests/test_basic.py": "def test(): pass\n",
                           "utilities/test_helpers.py": "x = 1\n",
                           "empty.py": "\n"}.items():
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_text(text)
    build_code(tmp_path)
    out = tmp_path / CODE_OUT
    assert sorted(p.name for p in out.iterdir()) == ["sympy.__init__.txt",
                                                     "sympy.core.basic.txt"]
    assert (out / "sympy.core.basic.txt").read_text() == "class Basic:\n    pass\n"
