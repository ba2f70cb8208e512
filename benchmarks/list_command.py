"""``facebench list {methods,datasets,suites,weightings}``: what facebench has, read from the
source and the suite files without importing torch (an answer in well under a second), as text
wrapped to the terminal (descriptions are whole sentences, never cut) or as JSON (``--json``).

``--cost`` adds each method's parameters and FLOPs per image (it builds every model: slow);
``--plugins MODULE ...`` imports the user's modules first and lists their methods too.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import textwrap
from pathlib import Path
from typing import Any

INDENT = "    "


def _width() -> int:
    return max(60, min(shutil.get_terminal_size((100, 20)).columns, 120))


def plain(text: str) -> str:
    """Docstring markup as plain text: ``:class:`~a.b.C``` -> ``C``, ````x```` -> ``x``."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1] if m.group(0).count("~")
                  else m.group(1), text)
    return text.replace("``", "")


def _para(text: str, indent: str = INDENT, first: str | None = None) -> str:
    """``text`` (docstring markup removed) wrapped at the terminal width (word boundaries only)."""
    return textwrap.fill(plain(text), _width(), initial_indent=first if first is not None else indent, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False)


def _arguments(args: list[dict[str, Any]]) -> list[str]:
    out = []
    for a in args:
        head = a["name"] + ("" if a["default"] is None else f"={a['default']}") + ("" if a["default"] is not None else " (required)")
        out.append(_para(f"{head}: {a['note']}" if a["note"] else head, INDENT * 2, INDENT + "- "))
    return out


def render_methods(rows: list[dict[str, Any]], common: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        lines.append(f"{r['method']}  ({r['class']}, {r['module']})" + ("" if r["source"] == "facebench" else f"  [{r['source']}]"))
        if r["paper"]:
            lines.append(_para(f"paper: {r['paper']}"))
        if r["description"]:
            lines.append(_para(r["description"]))
        facts = [f"targets: {r['task_kinds'].replace(',', ', ')}" if r["task_kinds"] else "",
                 f"input {r['input']}" if r["input"] else ""]
        if "params" in r:
            facts.append(f"{r['params']:,} parameters, {r['flops_per_image'] / 1e9:.3f} GFLOPs per image "
                         f"(40 binary targets)" if r.get("params") is not None else f"cost: {r.get('note', 'unknown')}")
        if any(facts):
            lines.append(_para("; ".join(f for f in facts if f)))
        if r["arguments"]:
            lines.append(INDENT + "arguments:")
            lines += _arguments(r["arguments"])
        lines.append("")
    names = ", ".join(a["name"] for a in common)
    lines.append(_para(f"Every method also takes: {names} (see facebench.lightning_modules.base.FaceAttributeTask). "
                       f"Your own methods: a registered class in a module named under the suite's plugins: key or "
                       f"facebench run --plugins, an import path module:ClassName as the method, or a "
                       f"facebench.methods entry point (README, 'Your own method').", "", ""))
    return "\n".join(lines)


def render_datasets(rows: list[dict[str, Any]], common: list[str]) -> str:
    lines = []
    for r in rows:
        lines.append(f"{r['dataset']}  ({r['class']}, {r['module']})")
        if r["description"]:
            lines.append(_para(r["description"]))
        if r["expected_files"]:
            lines.append(INDENT + "expected under root:")
            for path, what in r["expected_files"].items():
                lines.append(_para(f"{path}: {what}", INDENT * 2, INDENT + "- "))
        if r["arguments"]:
            lines.append(INDENT + "arguments:")
            lines += _arguments(r["arguments"])
        lines.append("")
    lines.append(_para(f"Every dataset also takes: {', '.join(common)} (see facebench.datamodules.base.FaceDataModule; "
                       f"facebench inspect --dataset NAME --root DIR shows what a folder holds).", "", ""))
    return "\n".join(lines)


def suite_rows() -> list[dict[str, Any]]:
    import yaml

    from facebench.benchmarks.suite import SUITES_DIR

    rows = []
    for p in sorted(Path(SUITES_DIR).glob("*.yaml")):
        raw = yaml.safe_load(p.read_text()) or {}
        rows.append({"suite": p.stem, "description": " ".join(str(raw.get("description", "")).split()),
                     "methods": list(raw.get("methods") or {}), "datasets": list(raw.get("datasets") or {}),
                     "seeds": raw.get("seeds", [0])})
    return rows


def render_suites(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        lines.append(r["suite"])
        if r["description"]:
            lines.append(_para(r["description"]))
        lines.append(_para(f"datasets: {', '.join(r['datasets'])}; methods: {', '.join(r['methods'])}; "
                           f"seeds: {', '.join(map(str, r['seeds']))}"))
        lines.append("")
    return "\n".join(lines)


def weighting_rows() -> list[dict[str, Any]]:
    """Each multi-task weighting: name, kind (loss or gradient), paper, description (from the source)."""
    from facebench.core.source_index import first_paragraph, index_package, registered, setting
    from facebench.lightning_modules import describe

    folder = describe.FOLDER / "weighting"
    classes = index_package(str(folder), "facebench.lightning_modules.weighting", "register_weighting", ("self",))
    from facebench.lightning_modules.weighting.peer_specs import peer_rows   # torchjd's aggregators (plain data)

    rows = [{"weighting": name, "class": cls.name, "kind": "gradient" if setting(cls, "gradient_based", classes) else "loss",
             "paper": setting(cls, "paper", classes, "") or "", "description": first_paragraph(cls.doc)}
            for name, cls in registered(classes).items()]
    return sorted(rows + peer_rows(), key=lambda r: r["weighting"])


def render_weightings(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        lines.append(f"{r['weighting']}  ({r['kind']} weighting, {r['class']})")
        if r["paper"]:
            lines.append(_para(f"paper: {r['paper']}"))
        if r["description"]:
            lines.append(_para(r["description"]))
        lines.append("")
    lines.append(_para("Use one in a suite as a method argument: mtl: {weighting: NAME, tasks: targets | groups, "
                       "gradients: parameters | representation (gradient weightings; representation is MGDA-UB's "
                       "cheaper approximation)}.", "", ""))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.what == "methods":
        from facebench.lightning_modules.describe import common_arguments, method_cost, method_rows

        rows = method_rows(args.plugins)
        if args.cost:
            rows = [{**r, **method_cost(r["method"])} for r in rows]
        text = json.dumps(rows, indent=1) if args.json else render_methods(rows, common_arguments())
    elif args.what == "datasets":
        from facebench.datamodules.listing import common_arguments as dataset_common, dataset_rows

        rows = dataset_rows()
        text = json.dumps(rows, indent=1) if args.json else render_datasets(rows, dataset_common())
    elif args.what == "weightings":
        rows = weighting_rows()
        text = json.dumps(rows, indent=1) if args.json else render_weightings(rows)
    else:
        rows = suite_rows()
        text = json.dumps(rows, indent=1) if args.json else render_suites(rows)
    print(text)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["methods", "datasets", "suites", "weightings"])
    p.add_argument("--json", action="store_true", help="machine-readable rows")
    p.add_argument("--cost", action="store_true", help="methods: build each model for 40 binary targets and count "
                                                        "parameters and FLOPs per image (slow)")
    p.add_argument("--plugins", nargs="+", metavar="MODULE", help="methods: import these modules first and list the "
                                                                  "methods they register")
