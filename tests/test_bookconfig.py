"""Book build helpers: one profile per build, parameter cells tucked away, duplicate scripts dropped."""
import json

import pytest
from sphinx.builders.html._assets import _JavaScript

from qadtr_core.bookconfig import _dedupe_scripts, executed_profile, tuck_parameters


def _nb(path, profile, cells):
    path.write_text(json.dumps({"cells": cells, "metadata": {"papermill": {"parameters": {"profile": profile}}}}))


def test_a_mix_of_profiles_is_refused(tmp_path):
    _nb(tmp_path / "a.ipynb", "quick", [])
    assert executed_profile(tmp_path) == "quick"
    _nb(tmp_path / "b.ipynb", "smoke", [])
    with pytest.raises(SystemExit, match="different profiles"):
        executed_profile(tmp_path)


def test_parameter_cells_are_tucked_away(tmp_path):
    cells = [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": ""},
             {"cell_type": "code", "metadata": {"tags": ["injected-parameters"]}, "source": ""},
             {"cell_type": "code", "metadata": {}, "source": ""}]
    _nb(tmp_path / "a.ipynb", "smoke", cells)
    tuck_parameters(tmp_path)
    tuck_parameters(tmp_path)  # idempotent
    tags = [c["metadata"]["tags"] for c in json.loads((tmp_path / "a.ipynb").read_text())["cells"]]
    assert tags == [["parameters", "hide-cell"], ["injected-parameters", "remove-cell"], []]


def test_scripts_registered_twice_are_kept_once():
    body = {"body": "const THEBE_JS_URL = 'x'"}
    scripts = [_JavaScript("a.js"), _JavaScript(None, **body), _JavaScript("b.js", priority=200),
               _JavaScript("", **body), _JavaScript("a.js", priority=800)]
    context = {"script_files": scripts}
    _dedupe_scripts(None, "p", "page.html", context, None)
    assert [str(js.filename) for js in context["script_files"]] == ["a.js", "None", "b.js"]
