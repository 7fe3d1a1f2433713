"""``python -m stepaudio.checkpoints make-tiny --out DIR``: write a checkpoint tree in the real layout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stepaudio.checkpoints.registry import write_tree, writers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stepaudio.checkpoints")
    sub = parser.add_subparsers(dest="command", required=True)
    for command, variant, help_text in (
        ("make-tiny", "tiny", "small dims, random weights (tests, demo)"),
        ("make-real-size", "real", "published dims, random weights (CPU benchmarks)"),
    ):
        p = sub.add_parser(command, help=help_text)
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--only", nargs="*", help="component names (default: all)")
        p.set_defaults(variant=variant)
    sub.add_parser("list", help="registered component writers")
    args = parser.parse_args(argv)
    if args.command == "list":
        print("\n".join(sorted(writers())))
        return 0
    try:
        paths = write_tree(args.out, args.variant, args.seed, args.only)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
