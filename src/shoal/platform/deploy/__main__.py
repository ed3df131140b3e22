"""``python -m shoal.platform.deploy SPEC TARGET -o DIR`` (until ``shoal deploy`` is wired)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shoal.platform.deploy import TARGETS, generate
from shoal.platform.spec import SpecError, load_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.platform.deploy",
                                     description="Generate deployment artefacts from a spec.")
    parser.add_argument("spec", help="the spec file, e.g. examples/shop/shoal.yaml")
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument("-o", "--out", type=Path, default=Path("deploy"),
                        help="output directory (default: deploy)")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except SpecError as exc:
        print(f"shoal deploy: {exc}", file=sys.stderr)
        return 2
    for path in generate(spec, args.target, args.out, spec_path=Path(args.spec).as_posix()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
