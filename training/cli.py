"""The command line every resumable training entry point shares: `--config`, `--fresh`, `--no-export`."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable


def run_cli(doc: str | None, run: Callable[..., object], argv: list[str] | None, config_help: str,
            default_config: Path | None = None) -> int:
    """Parses argv and calls run(config, fresh=..., export=...); returns the exit status (0).

    doc: the module's docstring (the --help text); config_help: where configs live, e.g.
    "training/configs/finetune-*.json"; default_config: --config when not given (else it is required).
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=default_config is None, default=default_config, help=config_help)
    parser.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and start over")
    parser.add_argument("--no-export", action="store_true", help="train only; do not write the package")
    args = parser.parse_args(argv)
    run(args.config, fresh=args.fresh, export=not args.no_export)
    return 0
