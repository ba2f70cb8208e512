"""The ``facebench`` command (``facebench -h`` lists every command, ``facebench COMMAND -h`` its options).

    facebench run [SUITE] [--only PAT ...] [--shard i/n] [--force] [--strict] [--set key=value ...] [--plugins MOD ...]
    facebench report [RESULTS_DIR] | --all
    facebench evaluate PREDICTIONS.csv ... --dataset KEY [--suite SUITE] [--split test ...] [--method NAME]
    facebench synth --format celeba --out DIR --n N --seed S
    facebench inspect --dataset NAME --root DIR [--json] [--set key=value ...]
    facebench predict --run RUN_DIR IMAGES... [--detect] [--out CSV]
    facebench analyze NAME [ARGS...]      (the paper analyses of benchmarks/analyses/)
    facebench list {methods,datasets,suites,weightings} [--json] [--cost] [--plugins MOD ...]

Errors a user can fix (a suite key, a data file, a predictions file) are one line, without a
traceback; warnings are one ``[facebench] warning: ...`` line each (library warnings with ``run -v``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence


from facebench.benchmarks.overrides import parse_sets


def cmd_run(args: argparse.Namespace) -> int:
    from facebench.benchmarks.logging_setup import set_verbose
    from facebench.benchmarks.suite import load_suite
    from facebench.benchmarks.worker import STRICT_DATA_ENV
    from facebench.core.plugins import PLUGINS_ENV, plugins_from_env

    set_verbose(args.verbose)   # the workers inherit it (FACEBENCH_VERBOSE)
    saved = {k: os.environ.get(k) for k in (STRICT_DATA_ENV, PLUGINS_ENV)}
    os.environ[STRICT_DATA_ENV] = "1" if args.strict else "0"   # the workers inherit it
    if args.plugins:   # load_suite imports them and writes them into each run's config for its worker
        os.environ[PLUGINS_ENV] = ",".join(dict.fromkeys(plugins_from_env() + args.plugins))
    try:
        # every check of the suite, before the runner (and torch) load: a typo fails in a second
        load_suite(args.suite, results_root=args.results, overrides=parse_sets(args.set))
        from facebench.benchmarks.runner import run_suite

        outcomes = run_suite(args.suite, only=args.only, shard=args.shard, force=args.force, results_root=args.results,
                             overrides=parse_sets(args.set), in_process=args.in_process, allow_dirty=args.allow_dirty)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return 1 if any(o.state in ("failed", "blocked") for o in outcomes) else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from facebench.benchmarks.evaluate import run

    return run(args)


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
    from facebench.benchmarks.list_command import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facebench", description="Face attribute benchmark suite: the methods of five "
                                "papers, datasets, a suite runner and leaderboards. 'facebench COMMAND -h' for a command's "
                                "options.")
    sub = p.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    r = sub.add_parser("run", help="train and evaluate a suite's runs, then build its reports (default suite: quick)")
    r.add_argument("suite", nargs="?", default="quick", help="suite name (benchmarks/suites/NAME.yaml) or YAML path")
    r.add_argument("--only", nargs="+", help="run ids, method or dataset keys (fnmatch patterns)")
    r.add_argument("--shard", help="i/n: run the i-th of n disjoint parts of the suite")
    r.add_argument("--force", action="store_true", help="re-run finished runs from scratch (with --only: the runs it names, "
                   "not the earlier stages they start from)")
    r.add_argument("--results", help="results root (default: results/)")
    r.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="override suite keys, e.g. trainer.devices=2")
    r.add_argument("--in-process", action="store_true", help="run in this process (debugging)")
    r.add_argument("--plugins", nargs="+", metavar="MODULE",
                   help="your modules to import first (they register methods), as the suite's plugins: key")
    r.add_argument("--allow-dirty", action="store_true",
                   help="write into the source checkout's results/ although the code has uncommitted changes "
                        "(the rows then carry the commit with +dirty)")
    r.add_argument("--strict", action="store_true",
                   help="refuse to run on data whose duplicate images span splits (see facebench inspect)")
    r.add_argument("-v", "--verbose", action="store_true",
                   help="also show Lightning's info lines, library warnings and W&B's messages")
    r.set_defaults(func=cmd_run)
    rp = sub.add_parser("report", help="rebuild a results folder's leaderboard, tables and figures from its run records")
    rp.add_argument("results_dir", nargs="?", default="quick")
    rp.add_argument("--all", action="store_true",
                    help="the cross-suite leaderboard: results/LEADERBOARD.md and results/leaderboard.csv from every "
                         "committed results/<suite>/leaderboard.csv")
    rp.set_defaults(func=cmd_report)
    ev = sub.add_parser("evaluate", help="score a CSV of predictions against a dataset split, as a leaderboard run")
    from facebench.benchmarks.evaluate import add_arguments as evaluate_arguments

    evaluate_arguments(ev)
    ev.set_defaults(func=cmd_evaluate)
    for name, text in PASS_THROUGH.items():   # their own parsers: dispatched before this one (main)
        sub.add_parser(name, help=text, add_help=False).set_defaults(func=None)
    i = sub.add_parser("inspect", help="what a dataset holds before training: splits, prevalence, identities, duplicates")
    i.add_argument("--dataset", required=True)
    i.add_argument("--root", required=False)
    i.add_argument("--json", action="store_true")
    i.add_argument("--no-file-checks", action="store_true", help="skip hashing files for duplicates")
    i.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="datamodule arguments")
    i.set_defaults(func=cmd_inspect)
    ls = sub.add_parser("list", help="methods (paper, arguments), datasets (expected files), suites or weightings")
    from facebench.benchmarks.list_command import add_arguments as list_arguments

    list_arguments(ls)
    ls.set_defaults(func=cmd_list)
    return p


#: Commands with their own argument parsers, dispatched before the main parser (which lists them).
PASS_THROUGH = {
    "synth": "write SynthFaces, the embedded synthetic dataset, in a real dataset's file layout",
    "predict": "a finished run's per-target probabilities for new images, as a CSV",
    "analyze": "the papers' analyses on finished runs (facebench analyze NAME -h)",
}


def main(argv: Sequence[str] | None = None) -> int:
    from facebench.benchmarks.logging_setup import configure_warnings

    configure_warnings()   # one "[facebench] warning: ..." line each
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(argv)
    except BrokenPipeError:   # the output went to a pipe that closed early (facebench list | head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no second error at exit's flush
        return 0
    except Exception as exc:  # noqa: BLE001  (user-facing errors as one line)
        from facebench.benchmarks.suite import SuiteConfigError
        from facebench.datamodules.formats import DatasetFormatError

        if isinstance(exc, (SuiteConfigError, DatasetFormatError, FileNotFoundError, ValueError)):
            print(f"facebench: error: {exc}", file=sys.stderr)
            return 2
        raise


def _dispatch(argv: list[str]) -> int:
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
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
