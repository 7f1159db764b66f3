"""``python -m zoneslice.xdp --ebpf``: print the program bcc would compile, and exit.

``--check`` also compiles and loads it (root) and prints the verifier's verdict.
"""

from __future__ import annotations

import argparse
import sys

from zoneslice.errors import XdpError
from zoneslice.xdp.loader import HotPath, Options, program_text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m zoneslice.xdp", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--ebpf", action="store_true", help="print the program (header and sizes inlined)"
    )
    ap.add_argument("--check", action="store_true", help="compile and load it, then unload")
    ap.add_argument("--max-exact", type=int, default=Options.max_exact)
    ap.add_argument("--max-deleg", type=int, default=Options.max_deleg)
    ap.add_argument("--body-max", type=int, default=Options.body_max)
    args = ap.parse_args(argv)
    opts = Options(max_exact=args.max_exact, max_deleg=args.max_deleg, body_max=args.body_max)
    if args.ebpf or not args.check:
        print(program_text(opts))
    if args.check:
        try:
            with HotPath(options=opts) as hp:
                print(f"loaded: program id {hp.prog_id}", file=sys.stderr)
        except XdpError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 9
    return 0


if __name__ == "__main__":
    sys.exit(main())
