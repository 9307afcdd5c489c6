"""Every code block of README.md runs as written.

``python`` blocks: all of them, concatenated top to bottom, in one fresh
interpreter (a subprocess in an empty directory), as a reader pasting them in
order would. ``bash`` blocks: running every command would take minutes, so each
``python -m engine ...`` command line is parsed by the real argument parser
(an unknown option or value fails), and each ``python SCRIPT`` names a file
that exists.
"""
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
README = os.path.join(ROOT, "README.md")


def blocks(lang):
    text = open(README, encoding="utf-8").read()
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def commands():
    """(block index, argv) of every command in the bash blocks (comments and && chains split)."""
    out = []
    for i, b in enumerate(blocks("bash")):
        for line in b.splitlines():
            for part in line.split("&&"):
                argv = shlex.split(part, comments=True)
                if argv:
                    out.append((i, argv))
    return out


def test_readme_has_the_blocks_it_documents():
    assert len(blocks("python")) >= 3 and len(blocks("bash")) >= 5


def test_python_blocks_run_top_to_bottom_in_a_fresh_interpreter(tmp_path):
    pytest.importorskip("tqdm")
    script = "\n\n".join(blocks("python"))
    path = tmp_path / "readme_blocks.py"
    path.write_text(script)
    env = dict(os.environ, PYTHONPATH=os.path.abspath(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("block,argv", commands(), ids=lambda x: " ".join(x) if isinstance(x, list) else str(x))
def test_bash_command_lines_parse(block, argv):
    if argv[0] != "python":
        assert argv[0] in ("pip", "asv"), f"README bash block {block}: unexpected command {argv}"
        return
    if argv[1:3] == ["-m", "engine"]:
        from engine.cli import build_parser
        rest = argv[3:]
        try:
            build_parser().parse_args(rest)
        except SystemExit as exc:
            pytest.fail(f"README: 'python -m engine {' '.join(rest)}' does not parse (exit {exc.code})")
    elif argv[1] == "-m":
        assert argv[2] in ("pytest", "engine.theorycheck"), argv
    else:
        assert os.path.exists(os.path.join(ROOT, argv[1])), f"README: script {argv[1]} does not exist"
