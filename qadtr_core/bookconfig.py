"""Build-time helper: the book's configuration with a banner naming the profile the pages show.

``python -m qadtr_core.bookconfig book/results _build/_config.yml`` reads the papermill parameters
of the executed notebooks, refuses a mix of profiles (a page would then mislabel its numbers), and
writes ``_config.yml`` plus an announcement banner shown on every page.

The module is also a small Sphinx extension (``sphinx: extra_extensions`` in ``_config.yml``): it
drops scripts that a page would load twice (sphinx-thebe registers its configuration script once per
read pass, and a second declaration of the same constant is a console error in the browser).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def executed_profile(results_dir: Path) -> str:
    """The single profile the executed notebooks in ``results_dir`` ran at."""
    profiles = {}
    for nb in sorted(Path(results_dir).glob("*.ipynb")):
        params = json.loads(nb.read_text()).get("metadata", {}).get("papermill", {}).get("parameters", {})
        profiles[nb.name] = params.get("profile", "smoke")
    if not profiles:
        raise SystemExit(f"no executed notebooks in {results_dir}; run `make notebooks` first")
    if len(set(profiles.values())) != 1:
        raise SystemExit(f"executed notebooks ran at different profiles: {profiles}; rerun `make notebooks PROFILE=...`")
    return next(iter(profiles.values()))


def tuck_parameters(results_dir: Path) -> None:
    """Collapse each executed notebook's parameter cell and drop the one papermill injected.

    The injected cell holds machine-specific values (paths); the banner and the chapters' own
    printouts already state the profile, so readers lose nothing.
    """
    for nb in sorted(Path(results_dir).glob("*.ipynb")):
        doc = json.loads(nb.read_text())
        for cell in doc.get("cells", []):
            tags = cell.setdefault("metadata", {}).setdefault("tags", [])
            extra = "remove-cell" if "injected-parameters" in tags else "hide-cell" if "parameters" in tags else None
            if extra and extra not in tags:
                tags.append(extra)
        nb.write_text(json.dumps(doc, indent=1))


def main(argv: list[str] | None = None) -> None:
    results_dir, out = (argv or sys.argv[1:])[:2]
    profile = executed_profile(Path(results_dir))
    tuck_parameters(Path(results_dir))
    config = yaml.safe_load(Path("_config.yml").read_text())
    config.setdefault("html", {})["announcement"] = (
        f"Results on these pages were computed at the <b>{profile}</b> profile "
        f"(the <i>How to reproduce</i> page gives the commands for the others)."
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"book config for profile {profile}: {out}")


def _dedupe_scripts(app: object, pagename: str, templatename: str, context: dict, doctree: object) -> None:
    seen, kept = set(), []
    for js in context.get("script_files", []):
        # the same inline script is registered once with filename None and once with ""
        key = (str(getattr(js, "filename", js) or ""), tuple(sorted(getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            kept.append(js)
    context["script_files"] = kept


def setup(app: object) -> dict:
    """Sphinx entry point (see the module doc)."""
    app.connect("html-page-context", _dedupe_scripts, priority=900)  # type: ignore[attr-defined]
    return {"parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    main()
