"""The one command-line shape every single-model export shares: a source folder in, the written path out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable


def export_main(
    export: Callable[[Path, Path | None], Path],
    *,
    prog: str,
    description: str,
    source_flag: str,
    source_help: str,
    out_default: str,
    argv: list[str] | None = None,
) -> int:
    """Parse ``--<source> DIR [--out PATH]``, run ``export``, print the written path; bad files exit 2 with a message."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(source_flag, dest="source", metavar="DIR", type=Path, required=True, help=source_help)
    parser.add_argument("--out", type=Path, help=f"default: {out_default}")
    args = parser.parse_args(argv)
    try:
        print(export(args.source, args.out))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
