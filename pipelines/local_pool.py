"""`python -m pipelines.local_pool STAGE ...`: the farm CLI on the process backend, kept for scripts
that call it. It has no options or defaults of its own: `generate ...` and `render ...` are
`zeroverse generate|render --backend processes ...` (`--processes N` is `--workers N`), and
`real --src DIR ...` is `zeroverse render --real DIR --backend processes ...`.
"""

from __future__ import annotations

import sys

RENAMED = {"--processes": "--workers", "--src": "--real"}


def cli_args(argv: list[str]) -> list[str]:
    """local_pool's argument list -> the zeroverse CLI's."""
    if not argv:
        raise SystemExit("usage: python -m pipelines.local_pool generate|render|real [zeroverse options]")
    stage, rest = argv[0], [RENAMED.get(a.split("=", 1)[0], a.split("=", 1)[0]) + (a[a.index("="):] if "=" in a else "") for a in argv[1:]]
    return ["render" if stage == "real" else stage, "--backend", "processes", "--no-progress", *rest]


def main(argv: list[str] | None = None) -> None:
    from zeroverse.cli import main as zeroverse

    zeroverse.main(cli_args(sys.argv[1:] if argv is None else argv), prog_name="zeroverse")


if __name__ == "__main__":
    main()
