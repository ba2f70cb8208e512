"""The ``facebench`` command.

    facebench run [SUITE] [--only PAT ...] [--shard i/n] [--force] [--strict] [--set key=value ...]
    facebench report [RESULTS_DIR] | --all
    facebench synth --format celeba --out DIR --n N --seed S
    facebench inspect --dataset NAME --root DIR [--json] [--set key=value ...]
    facebench list {methods,datasets,suites,weightings} [--json]
    facebench predict --run RUN_DIR IMAGES... [--detect] [--out CSV]
    facebench analyze NAME [ARGS...]      (the paper analyses of benchmarks/analyses/)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import yaml

from facebench.benchmarks.overrides import parse_sets


def cmd_run(args: argparse.Namespace) -> int:
    from facebench.benchmarks.logging_setup import set_verbose
    from facebench.benchmarks.runner import run_suite

    from facebench.benchmarks.worker import STRICT_DATA_ENV

    set_verbose(args.verbose)   # the workers inherit it (FACEBENCH_VERBOSE)
    before = os.environ.get(STRICT_DATA_ENV)
    os.environ[STRICT_DATA_ENV] = "1" if args.strict else "0"   # the workers inherit it
    try:
        outcomes = run_suite(args.suite, only=args.only, shard=args.shard, force=args.force, results_root=args.results,
                             overrides=parse_sets(args.set), in_process=args.in_process, allow_dirty=args.allow_dirty)
    finally:
        if before is None:
            os.environ.pop(STRICT_DATA_ENV, None)
        else:
            os.environ[STRICT_DATA_ENV] = before
    return 1 if any(o.state in ("failed", "blocked") for o in outcomes) else 0


def cmd_report(args: argparse.Namespace) -> int:
    from facebench.benchmarks.report import build_reports
    from facebench.core.paths import results_root

    if args.all:
        from facebench.benchmarks.leaderboard import write_cross_suite

        return 0 if write_cross_suite(results_root()) else 1

    target = Path(args.results_dir)
    if not target.exists() and (results_root() / args.results_dir).exists():
        target = results_root() / args.results_dir
    if not target.is_dir():
        print(f"facebench report: {args.results_dir}: no such results folder", file=sys.stderr)
        return 2
    board = build_reports(target, command=" ".join(["facebench"] + sys.argv[1:]))
    return 0 if not board.empty else 1


def cmd_inspect(args: argparse.Namespace) -> int:
    from facebench.datamodules.base import create_datamodule

    dm = create_datamodule(args.dataset, root=args.root, **parse_sets(args.set))
    dm.prepare_data()
    info = dm.describe(check_files=not args.no_file_checks)
    if args.json:
        print(json.dumps(info, indent=1, default=str))
    else:
        from facebench.datamodules.inspect import format_description

        print(format_description(info))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "methods":
        from facebench.lightning_modules.describe import describe_methods

        rows = describe_methods()
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            import pandas as pd

            print(pd.DataFrame(rows).to_string(index=False))
    elif args.what == "weightings":
        from facebench.lightning_modules.weighting import WEIGHTINGS

        rows = [{"name": n, "kind": "gradient" if cls.gradient_based else "loss",
                 "doc": " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())} for n, cls in WEIGHTINGS.items()]
        print(json.dumps(rows, indent=1) if args.json else "\n".join(f"{r['name']:<12} {r['kind']:<9} {r['doc']}" for r in rows))
    elif args.what == "datasets":
        from facebench.datamodules.base import datamodule_names, get_datamodule_class

        rows = [{"name": n, "class": get_datamodule_class(n).__name__,
                 "doc": (get_datamodule_class(n).__doc__ or "").strip().splitlines()[0]} for n in datamodule_names()]
        print(json.dumps(rows, indent=1) if args.json else "\n".join(f"{r['name']:<14} {r['doc']}" for r in rows))
    else:
        from facebench.benchmarks.suite import SUITES_DIR

        rows = []
        for p in sorted(SUITES_DIR.glob("*.yaml")):
            raw = yaml.safe_load(p.read_text()) or {}
            rows.append({"name": p.stem, "description": raw.get("description", "").strip()})
        print(json.dumps(rows, indent=1) if args.json else "\n".join(f"{r['name']:<14} {r['description']}" for r in rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facebench", description="Face attribute benchmark suite.")
    sub = p.add_subparsers(dest="command")
    r = sub.add_parser("run", help="train and evaluate a suite (default: quick)")
    r.add_argument("suite", nargs="?", default="quick", help="suite name (benchmarks/suites/NAME.yaml) or YAML path")
    r.add_argument("--only", nargs="+", help="run ids, method or dataset keys (fnmatch patterns)")
    r.add_argument("--shard", help="i/n: run the i-th of n disjoint parts of the suite")
    r.add_argument("--force", action="store_true", help="re-run finished runs from scratch (with --only: the runs it names, "
                   "not the earlier stages they start from)")
    r.add_argument("--results", help="results root (default: results/)")
    r.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="override suite keys, e.g. trainer.devices=2")
    r.add_argument("--in-process", action="store_true", help="run in this process (debugging)")
    r.add_argument("--allow-dirty", action="store_true",
                   help="write into the source checkout's results/ although the code has uncommitted changes "
                        "(the rows then carry the commit with +dirty)")
    r.add_argument("--strict", action="store_true",
                   help="refuse to run on data whose duplicate images span splits (see facebench inspect)")
    r.add_argument("-v", "--verbose", action="store_true",
                   help="also show Lightning's info lines, library warnings and W&B's messages")
    r.set_defaults(func=cmd_run)
    rp = sub.add_parser("report", help="rebuild leaderboards and tables from result records")
    rp.add_argument("results_dir", nargs="?", default="quick")
    rp.add_argument("--all", action="store_true",
                    help="the cross-suite leaderboard: results/LEADERBOARD.md and results/leaderboard.csv from every "
                         "committed results/<suite>/leaderboard.csv")
    rp.set_defaults(func=cmd_report)
    s = sub.add_parser("synth", help="write SynthFaces in a dataset's on-disk format", add_help=False)
    s.set_defaults(func=None)
    i = sub.add_parser("inspect", help="what a dataset holds, before training")
    i.add_argument("--dataset", required=True)
    i.add_argument("--root", required=False)
    i.add_argument("--json", action="store_true")
    i.add_argument("--no-file-checks", action="store_true", help="skip hashing files for duplicates")
    i.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="datamodule arguments")
    i.set_defaults(func=cmd_inspect)
    ls = sub.add_parser("list", help="registered methods, datasets or suites")
    ls.add_argument("what", choices=["methods", "datasets", "suites", "weightings"])
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "analyze":
        from facebench.benchmarks.analyses import analysis_names, run_analysis

        if len(argv) < 2 or argv[1] in ("-h", "--help"):
            print("usage: facebench analyze NAME [ARGS...]\nanalyses: " + ", ".join(analysis_names()))
            return 0 if len(argv) >= 2 else 2
        return run_analysis(argv[1], argv[2:])
    if argv and argv[0] == "predict":
        from facebench.benchmarks.predict import main as predict_main

        return predict_main(argv[1:])
    if argv and argv[0] == "synth":
        from facebench.datamodules.synthfaces.cli import main as synth_main

        return synth_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv or ["run"])
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001  (user-facing errors as one line)
        from facebench.benchmarks.suite import SuiteConfigError
        from facebench.datamodules.formats import DatasetFormatError

        if isinstance(exc, (SuiteConfigError, DatasetFormatError, FileNotFoundError, ValueError)):
            print(f"facebench: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
