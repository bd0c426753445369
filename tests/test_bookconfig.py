"""Book build helpers: one profile and one commit per build, parameter cells tucked away, duplicate scripts dropped."""
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from sphinx.builders.html._assets import _JavaScript

from qadtr_core.build import bookconfig
from qadtr_core.build.bookconfig import _dedupe_scripts, executed_profile, executed_provenance, tuck_parameters

REPO = Path(__file__).resolve().parents[1]


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


def test_the_parameters_cell_shows_what_the_page_ran_with(tmp_path):
    stored = 'profile = "smoke"  # smoke, quick or paper\nseed = 0\nstatic_dir = "../book/_static"\nbits = [8, 4]'
    injected = '# Parameters\nprofile = "quick"\nstatic_dir = "/home/me/book/_static"\nscorecard_json = "/x/s.json"\n'
    cells = [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": stored},
             {"cell_type": "code", "metadata": {"tags": ["injected-parameters"]}, "source": injected}]
    _nb(tmp_path / "a.ipynb", "quick", cells)
    tuck_parameters(tmp_path)
    tuck_parameters(tmp_path)  # idempotent
    src = json.loads((tmp_path / "a.ipynb").read_text())["cells"][0]["source"]
    assert src == 'profile = "quick"  # smoke, quick or paper\nseed = 0\nbits = [8, 4]'  # no smoke, no paths


def test_scripts_registered_twice_are_kept_once():
    body = {"body": "const THEBE_JS_URL = 'x'"}
    scripts = [_JavaScript("a.js"), _JavaScript(None, **body), _JavaScript("b.js", priority=200),
               _JavaScript("", **body), _JavaScript("a.js", priority=800)]
    context = {"script_files": scripts}
    _dedupe_scripts(None, "p", "page.html", context, None)
    assert [str(js.filename) for js in context["script_files"]] == ["a.js", "None", "b.js"]


def _stamped(path, profile, commit, version="0.1.0"):
    _nb(path, profile, [])
    doc = json.loads(path.read_text())
    doc["metadata"]["qadtr"] = {"commit": commit, "version": version, "profile": profile}
    path.write_text(json.dumps(doc))


def test_stamp_records_commit_version_and_profile(tmp_path, monkeypatch):
    _nb(tmp_path / "a.ipynb", "quick", [])
    monkeypatch.setattr(bookconfig, "source_commit", lambda: "abc123")
    bookconfig.main(["stamp", str(tmp_path)])
    meta = json.loads((tmp_path / "a.ipynb").read_text())["metadata"]
    assert meta["qadtr"] == {"commit": "abc123", "version": bookconfig.library_version(), "profile": "quick"}
    assert meta["papermill"]["parameters"] == {"profile": "quick"}  # the rest of the notebook is kept
    assert executed_provenance(tmp_path)["commit"] == "abc123"
    bookconfig.main(["stamp", "--commit", "def456", str(tmp_path / "a.ipynb")])  # the commit a build started from
    assert executed_provenance(tmp_path)["commit"] == "def456"


def test_mixed_commits_profiles_or_unstamped_notebooks_are_refused(tmp_path):
    _stamped(tmp_path / "a.ipynb", "quick", "c1")
    _stamped(tmp_path / "b.ipynb", "quick", "c1")
    assert executed_provenance(tmp_path) == {"profile": "quick", "commit": "c1", "version": "0.1.0"}
    _stamped(tmp_path / "b.ipynb", "quick", "c2")
    with pytest.raises(SystemExit, match="different commits"):
        executed_provenance(tmp_path)
    _stamped(tmp_path / "b.ipynb", "smoke", "c1")
    with pytest.raises(SystemExit, match="different profiles"):
        executed_provenance(tmp_path)
    _nb(tmp_path / "b.ipynb", "quick", [])
    with pytest.raises(SystemExit, match=r"without a recorded commit: \['b.ipynb'\]"):
        executed_provenance(tmp_path)


def test_the_banner_names_profile_and_commit(tmp_path, monkeypatch):
    results = tmp_path / "book" / "results"
    results.mkdir(parents=True)
    _stamped(results / "a.ipynb", "quick", "0123456789abcdef0123")
    (tmp_path / "_config.yml").write_text("title: t\n")
    (tmp_path / "_toc.yml").write_text(yaml.safe_dump({"format": "jb-book", "root": "book/intro", "parts": [
        {"caption": "Results", "chapters": [{"file": "book/results/a"}, {"file": "book/results/z_new"}]},
        {"caption": "Beyond", "chapters": [{"file": "book/results/y_new"}]},
        {"caption": "About", "chapters": [{"file": "book/glossary"}]}]}))
    monkeypatch.chdir(tmp_path)
    bookconfig.main(["book/results", "_build/_config.yml"])
    banner = yaml.safe_load((tmp_path / "_build" / "_config.yml").read_text())["html"]["announcement"]
    assert "<b>quick</b>" in banner and "<code>0123456789ab</code>" in banner
    # the table of contents keeps every executed chapter and every written page, and leaves out the
    # chapters not executed yet (and a part they leave empty)
    toc = yaml.safe_load((tmp_path / "_build" / "_toc.yml").read_text())
    assert toc["root"] == "book/intro" and [p["caption"] for p in toc["parts"]] == ["Results", "About"]
    assert toc["parts"][0]["chapters"] == [{"file": "book/results/a"}]
    assert toc["parts"][1]["chapters"] == [{"file": "book/glossary"}]  # not a result: Jupyter Book checks it


def test_the_book_helper_does_not_import_torch():
    code = "import sys, qadtr_core.build.bookconfig; assert 'torch' not in sys.modules"
    subprocess.run([__import__("sys").executable, "-c", code], cwd=REPO, check=True)


def test_committed_results_come_from_one_profile_and_one_commit():
    try:
        listed = subprocess.run(["git", "ls-files", "book/results/*.ipynb"], cwd=REPO, capture_output=True, text=True,
                                check=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout: cannot tell which executed notebooks are committed")
    if not listed:
        pytest.skip("no executed notebooks are committed in book/results yet (they come from one full "
                    "`make book PROFILE=quick`); nothing to check")
    committed = REPO / "_build" / "committed-results"
    committed.mkdir(parents=True, exist_ok=True)
    for old in committed.glob("*.ipynb"):
        old.unlink()
    for name in listed:  # the committed (indexed) version, not a local rebuild in the working tree
        blob = subprocess.run(["git", "show", f":{name}"], cwd=REPO, capture_output=True, check=True, timeout=30).stdout
        (committed / Path(name).name).write_bytes(blob)
    prov = executed_provenance(committed)
    assert prov["commit"] not in ("unknown", "") and not prov["commit"].endswith("-dirty"), prov


def test_source_commit_outside_git_reads_the_setting(tmp_path, monkeypatch):
    """A copy without git history (a GPU build machine) names its commit through $QADTR_COMMIT; a git
    checkout ignores the setting, so a stale value can never relabel real history."""
    monkeypatch.delenv("QADTR_COMMIT", raising=False)
    assert bookconfig.source_commit(tmp_path) == "unknown"
    monkeypatch.setenv("QADTR_COMMIT", "abc123")
    assert bookconfig.source_commit(tmp_path) == "abc123"
    repo = Path(bookconfig.__file__).resolve().parents[2]
    if (repo / ".git").exists():  # in a git checkout (not a copy without history) the setting is ignored
        assert bookconfig.source_commit(repo).split("-")[0] != "abc123"


def test_the_scorecard_json_must_match_the_notebooks(tmp_path):
    _stamped(tmp_path / "a.ipynb", "quick", "c1")
    assert bookconfig.check_results(tmp_path)["commit"] == "c1"  # no scorecard.json: the notebooks alone
    card = tmp_path / "scorecard.json"
    card.write_text(json.dumps({"profile": "quick", "commit": "c1", "claims": {}}))
    assert bookconfig.check_results(tmp_path)["profile"] == "quick"
    card.write_text(json.dumps({"profile": "quick", "commit": "c0", "claims": {}}))
    with pytest.raises(SystemExit, match="records commit 'c0'"):
        bookconfig.check_results(tmp_path)
    card.write_text(json.dumps({"profile": "smoke", "commit": "c1", "claims": {}}))
    with pytest.raises(SystemExit, match="records profile 'smoke'"):
        bookconfig.main(["check", str(tmp_path)])
