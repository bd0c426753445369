"""Build-time helper: stamps executed notebooks, and writes the book's configuration with a banner.

``python -m qadtr_core.build.bookconfig stamp [--commit SHA] book/results/*.ipynb`` (run by ``make notebooks``
after papermill, with the commit the build started from: ``python -m qadtr_core.build.bookconfig commit``)
records in each executed notebook's metadata, under ``qadtr``, the commit of the checkout, the library
version and the profile it ran at.

``python -m qadtr_core.build.bookconfig book/results _build/_config.yml`` reads those stamps, refuses a mix of
profiles or of commits (a page would then mislabel its numbers) and an unstamped notebook, and writes
``_config.yml`` plus an announcement banner, shown on every page, naming the profile and the commit, and
beside it ``_toc.yml`` without the result chapters that have no executed notebook yet (:func:`write_toc`).

The module is also a small Sphinx extension (``sphinx: extra_extensions`` in ``_config.yml``): it
drops scripts that a page would load twice (sphinx-thebe registers its configuration script once per
read pass, and a second declaration of the same constant is a console error in the browser).

It imports neither torch nor the rest of the library, so the book renders in an environment with only
``requirements-book.txt`` installed.
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

log = logging.getLogger(__name__)


def _papermill_profile(doc: dict) -> str:
    return doc.get("metadata", {}).get("papermill", {}).get("parameters", {}).get("profile", "smoke")


def executed_profile(results_dir: Path) -> str:
    """The single profile the executed notebooks in ``results_dir`` ran at."""
    profiles = {}
    for nb in sorted(Path(results_dir).glob("*.ipynb")):
        profiles[nb.name] = _papermill_profile(json.loads(nb.read_text()))
    if not profiles:
        raise SystemExit(f"no executed notebooks in {results_dir}; run `make notebooks` first")
    if len(set(profiles.values())) != 1:
        raise SystemExit(f"executed notebooks ran at different profiles: {profiles}; rerun `make notebooks PROFILE=...`")
    return next(iter(profiles.values()))


def source_commit(repo: Path | None = None) -> str:
    """The commit of the checkout (``<sha>-dirty`` with uncommitted changes to tracked files, ``unknown``
    outside git, unless ``$QADTR_COMMIT`` names it: a copy of a checkout without its history, such as a
    GPU build machine's). Changes under ``book/results``, ``book/_static`` and ``_build`` do not count: they
    are the outputs that a book build writes, so a rebuild over committed results still names a clean commit."""
    repo = Path(repo) if repo is not None else Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)book/results", ":(exclude)book/_static", ":(exclude)_build"],
                               cwd=repo, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("QADTR_COMMIT") or "unknown"
    return sha + ("-dirty" if dirty else "")


def library_version() -> str:
    """The installed version of the ``qadtr`` distribution (``unknown`` when it is not installed)."""
    try:
        return importlib.metadata.version("qadtr")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def stamp(notebooks: list[Path], commit: str | None = None) -> None:
    """Record ``metadata.qadtr = {commit, version, profile}`` in each executed notebook (in place)."""
    commit = commit or source_commit()
    version = library_version()
    for nb in notebooks:
        doc = json.loads(Path(nb).read_text())
        doc.setdefault("metadata", {})["qadtr"] = {"commit": commit, "version": version, "profile": _papermill_profile(doc)}
        Path(nb).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        log.info("stamped %s: commit %s, qadtr %s", nb, commit, version)


def executed_provenance(results_dir: Path) -> dict[str, str]:
    """The one ``{profile, commit, version}`` that every executed notebook in ``results_dir`` records.

    Raises ``SystemExit`` (naming the notebooks) when there are none, when one is not stamped, or when
    they ran at different profiles, commits or library versions.
    """
    profile = executed_profile(results_dir)
    stamps = {nb.name: json.loads(nb.read_text()).get("metadata", {}).get("qadtr")
              for nb in sorted(Path(results_dir).glob("*.ipynb"))}
    unstamped = sorted(name for name, s in stamps.items() if not isinstance(s, dict))
    if unstamped:
        raise SystemExit(f"executed notebooks without a recorded commit: {unstamped}; they were not run by `make notebooks` "
                         f"(or stamp them: python -m qadtr_core.build.bookconfig stamp {results_dir}/*.ipynb)")
    for field in ("profile", "commit", "version"):
        values = {name: s.get(field) for name, s in stamps.items()}
        if len(set(values.values())) != 1:
            raise SystemExit(f"executed notebooks come from different {field}s: {values}; "
                             f"rerun every notebook with `make notebooks` from one clean checkout")
    found = {field: next(iter(stamps.values())).get(field) for field in ("profile", "commit", "version")}
    if found["profile"] != profile:
        raise SystemExit(f"the notebooks' stamps say profile {found['profile']!r}, their parameters {profile!r}")
    return found


def check_results(results_dir: Path) -> dict[str, str]:
    """:func:`executed_provenance`, and the scorecard's JSON beside the notebooks (if any) from the same
    profile and commit: the checks ``make test`` runs on the committed results."""
    prov = executed_provenance(results_dir)
    card = Path(results_dir) / "scorecard.json"
    if card.exists():
        doc = json.loads(card.read_text())
        for field in ("profile", "commit"):
            if doc.get(field) != prov[field]:
                raise SystemExit(f"{card} records {field} {doc.get(field)!r}, the executed notebooks {prov[field]!r}: "
                                 f"rerun the scorecard chapter with the others")
    return prov


def _is_path_parameter(name: str) -> bool:
    """Parameters that hold a machine's paths (the scorecard's JSON, the figure folder): never shown."""
    return name.endswith(("_dir", "_json", "_path"))


def ran_with(stored: str, injected: str) -> str:
    """The stored parameters cell's source with each value replaced by the one papermill injected (the
    values the page actually ran with), paths left out; lines that are not plain assignments stay."""
    import ast

    values: dict[str, str] = {}
    for node in ast.parse(injected).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = ast.get_source_segment(injected, node.value) or ""
    out, done = [], set()
    for line in stored.splitlines():
        name = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else ""
        if name.isidentifier() and _is_path_parameter(name):
            continue
        if name.isidentifier() and name in values:
            comment = line.split("#", 1)[1] if "#" in line.split("=", 1)[1] else ""
            line = f"{name} = {values[name]}" + (f"  #{comment}" if comment else "")
            done.add(name)
        out.append(line)
    out += [f"{k} = {v}" for k, v in values.items() if k not in done and not _is_path_parameter(k)]
    return "\n".join(out)


def tuck_parameters(results_dir: Path) -> None:
    """Show each executed notebook's parameters as it ran, collapsed, and drop the cell papermill injected.

    The stored parameters cell holds the notebook's defaults (the smoke profile), which would mislabel a
    quick-profile page: its values are replaced by the injected ones (:func:`ran_with`; machine paths left
    out), the cell is collapsed (``hide-cell``) and the injected cell removed. Idempotent.
    """
    for nb in sorted(Path(results_dir).glob("*.ipynb")):
        doc = json.loads(nb.read_text())
        cells = doc.get("cells", [])
        injected = ["".join(c.get("source", "")) for c in cells
                    if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
        for cell in cells:
            tags = cell.setdefault("metadata", {}).setdefault("tags", [])
            if "parameters" in tags and injected:
                cell["source"] = ran_with("".join(cell.get("source", "")), injected[0])
            extra = "remove-cell" if "injected-parameters" in tags else "hide-cell" if "parameters" in tags else None
            if extra and extra not in tags:
                tags.append(extra)
        nb.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def banner(prov: dict[str, str]) -> str:
    """The announcement shown on every page: the profile and the commit the results come from."""
    commit = prov["commit"]
    short = commit[:12] + ("-dirty" if commit.endswith("-dirty") else "") if commit != "unknown" else "an unknown commit"
    return (f"Results on these pages were computed at the <b>{prov['profile']}</b> profile, from commit "
            f"<code>{short}</code> (qadtr {prov['version']}); the <i>How to reproduce</i> page gives the commands "
            f"for the other profiles.")


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args[:1] == ["commit"]:  # the commit a build starts from (make notebooks stamps every notebook with it)
        print(source_commit())
        return
    if args[:1] == ["stamp"]:
        commit = None
        if "--commit" in args:
            i = args.index("--commit")
            commit, args = args[i + 1], args[:i] + args[i + 2:]
        files = [p for a in args[1:] for p in (sorted(Path(a).glob("*.ipynb")) if Path(a).is_dir() else [Path(a)])]
        if not files:
            raise SystemExit("usage: python -m qadtr_core.build.bookconfig stamp [--commit SHA] NOTEBOOK.ipynb|DIR ...")
        stamp(files, commit)
        return
    if args[:1] == ["check"]:
        prov = check_results(Path(args[1]))
        log.info("%s: profile %s, commit %s, qadtr %s", args[1], prov["profile"], prov["commit"], prov["version"])
        return
    if len(args) != 2:
        raise SystemExit("usage: python -m qadtr_core.build.bookconfig RESULTS_DIR OUT_CONFIG | stamp FILES | "
                         "check RESULTS_DIR")
    results_dir, out = args
    prov = executed_provenance(Path(results_dir))
    tuck_parameters(Path(results_dir))
    config = yaml.safe_load(Path("_config.yml").read_text())
    config.setdefault("html", {})["announcement"] = banner(prov)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(yaml.safe_dump(config, sort_keys=False))
    toc = Path(out).parent / "_toc.yml"
    dropped = write_toc(Path("_toc.yml"), toc, Path(results_dir))
    log.info("book config for profile %s, commit %s: %s (table of contents %s%s)", prov["profile"], prov["commit"],
             out, toc, f"; not executed yet, left out: {', '.join(dropped)}" if dropped else "")


def write_toc(source: Path, out: Path, results_dir: Path) -> list[str]:
    """``source`` (the book's ``_toc.yml``) written to ``out`` without the result pages whose executed notebook is
    not in ``results_dir`` (a chapter the committed build predates, such as a new one), and without a part
    left empty; returns the pages left out. Every other page stays, so a missing hand-written page is still
    Jupyter Book's error."""
    toc = yaml.safe_load(Path(source).read_text())
    prefix = "book/results/"
    dropped: list[str] = []

    def keep(entry: dict) -> bool:
        f = str(entry.get("file", ""))
        if f.startswith(prefix) and not (Path(results_dir) / (f[len(prefix):] + ".ipynb")).exists():
            dropped.append(f)
            return False
        return True

    for part in toc.get("parts", []):
        part["chapters"] = [c for c in part.get("chapters", []) if keep(c)]
    toc["parts"] = [p for p in toc.get("parts", []) if p["chapters"]]
    Path(out).write_text(yaml.safe_dump(toc, sort_keys=False))
    return dropped


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
