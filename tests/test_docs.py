"""The project's design document is in the repository, and every citation of it resolves.

Code comments cite sections as ``docs/design.md, "Section name"``; the document outside the
repository that the project started from (DESIGN.md) must not be referred to anywhere.
"""
import os
import re
import subprocess

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
DESIGN = os.path.join(ROOT, "docs", "design.md")


def _tracked_text_files():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:          # not a git checkout (an sdist): walk the tree
        return [os.path.relpath(os.path.join(d, f), ROOT) for d, _, fs in os.walk(ROOT) for f in fs
                if f.endswith((".py", ".md", ".h", ".c", ".toml", ".json", ".cfg"))]
    return [p for p in out.stdout.split() if p.endswith((".py", ".md", ".h", ".c", ".toml", ".json", ".cfg"))]


def _headings():
    with open(DESIGN) as f:
        return {m.group(1).strip() for m in re.finditer(r"^#+ (.+)$", f.read(), re.M)}


def test_design_doc_is_in_the_repo_and_nothing_points_outside_it():
    assert os.path.isfile(DESIGN)
    offenders = []
    for rel in _tracked_text_files():
        with open(os.path.join(ROOT, rel), errors="replace") as f:
            text = f.read()
        if rel != "tests/test_docs.py" and re.search(r"(?<![\w/])DESIGN\.md", text):
            offenders.append(rel)
    assert not offenders, f"these files refer to DESIGN.md (outside the repo; use docs/design.md): {offenders}"


def test_every_cited_section_of_the_design_doc_exists():
    heads = _headings()
    cited = {}
    for rel in _tracked_text_files():
        if rel == "tests/test_docs.py":      # its docstring shows the citation form
            continue
        with open(os.path.join(ROOT, rel), errors="replace") as f:
            text = f.read()
        # docs/design.md, "Chain products" and "The step schedule"  /  docs/design.md ("The step schedule")
        for m in re.finditer(r'docs/design\.md[,:]?\s*\(?((?:"[^"]+"(?:\s*(?:and|,)\s*)?)+)', text):
            for name in re.findall(r'"([^"]+)"', m.group(1)):
                name = " ".join(name.replace("*", " ").split())     # wrapped over comment lines
                cited.setdefault(name, set()).add(rel)
    assert cited, "no section citations found: the pattern above is out of date"
    missing = {k: sorted(v) for k, v in cited.items() if k not in heads}
    assert not missing, f"cited sections missing from docs/design.md: {missing}"
