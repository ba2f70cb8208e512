"""Wall time of a whole suite run, as a user starts it.

``python -m facebench.benchmarks.perf.suite_time [SUITE] [--results-dir DIR] [--only PATTERN ...] [--set key=value ...]``

Runs ``facebench run SUITE --force --set results_dir=DIR`` (default: the ``quick`` suite, what a
bare ``facebench run`` trains, into ``/tmp/perf_quick``) in a subprocess and prints its wall time,
each run's own time from the runner's summary lines, and the peak RSS of the largest process.
``--set image_cache=...`` style overrides go to the suite (``datasets.<key>.args.image_cache=false``
compares against the uncached path).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

from facebench.benchmarks.perf.common import header, peak_rss_mb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("suite", nargs="?", default="quick")
    ap.add_argument("--results-dir", default="/tmp/perf_quick")
    ap.add_argument("--only", nargs="*", default=[])
    ap.add_argument("--set", dest="overrides", nargs="*", default=[])
    args = ap.parse_args(argv)
    from facebench.benchmarks.suite import SuiteConfigError, suite_path

    try:
        path = suite_path(args.suite)
    except SuiteConfigError as exc:
        print(f"suite {args.suite!r} is not available here: {exc}")
        return 2
    only = ["--only", *args.only] if args.only else []
    cmd = [sys.executable, "-m", "facebench.benchmarks.cli", "run", str(path), *only, "--force", "--set",
           f"results_dir={args.results_dir}", *args.overrides]
    header(f"suite wall time: facebench run {args.suite} {' '.join(only)} --force --set results_dir={args.results_dir} "
           f"{' '.join(args.overrides)}".rstrip(), {"suite_file": path})
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[facebench]")]
    runs = [ln for ln in lines if re.search(r"\(\d+s\)$", ln)]
    for ln in runs:
        print("   " + ln)
    print(f"   exit code {proc.returncode}; {len(runs)} run(s); wall time {wall:.0f}s ({wall / 60:.1f} min); "
          f"peak RSS of the largest child {peak_rss_mb()['children']:.0f} MiB")
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
