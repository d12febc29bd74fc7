"""The `hasa` command: run, sweep, report and benchmark hasa-flwr through the Flower CLI."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .data import DataError
from .launch import app_defaults, flwr_run, merge_config, preflight, read_preset


def parse_overrides(items: list[str]) -> dict:
    """`--run-config` values: a preset .toml file and/or `key=value` pairs (TOML values)."""
    from flwr.common.config import parse_config_args

    out: dict = {}
    for item in items:
        out.update(read_preset(item) if item.endswith(".toml") else parse_config_args([item]))
    return out


def cmd_run(args: argparse.Namespace) -> int:
    app = Path(args.app).resolve()
    config = merge_config(app_defaults(app), parse_overrides(args.run_config))
    config["results-dir"] = str(Path(config["results-dir"]).expanduser().absolute())
    settings = preflight(config)
    outcome = flwr_run(app, config, num_supernodes=settings.num_clients, federation_config=args.federation_config,
                       log=sys.stdout)
    if outcome.results is None:
        why = outcome.error or f"flwr run exited with code {outcome.returncode} and wrote no results.json"
        print(f"hasa: error: {why}", file=sys.stderr)
        return 1
    print(f"results: {outcome.results}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hasa", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="check the run config, then `flwr run` it in simulation")
    run.add_argument("app", nargs="?", default=".", help="the hasa-flwr app folder (default: .)")
    run.add_argument("--run-config", action="append", default=[], metavar="FILE.toml|k=v",
                     help="preset file and/or key=value overrides (repeatable)")
    run.add_argument("--federation-config", default="",
                     help="passed to flwr run (default: num-supernodes=<num-clients>)")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, DataError, FileNotFoundError) as err:
        print(f"hasa: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
