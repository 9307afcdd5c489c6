"""``python -m engine.theorycheck [OPTIONS]``: the same as ``python -m engine theorycheck [OPTIONS]``,
kept because the README's regeneration commands use this form. The check itself is
``engine.experiments.theory_check``."""
from __future__ import annotations

import sys

from .cli import main as _cli_main


def main(argv=None) -> int:
    """``python -m engine theorycheck`` with ``argv`` (default: the command line's arguments)."""
    return _cli_main(["theorycheck", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
