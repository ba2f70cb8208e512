"""Human-readable rendering of :meth:`FaceDataModule.describe` for ``facebench inspect``."""

from __future__ import annotations

from typing import Any


def format_description(info: dict[str, Any]) -> str:
    lines = [f"dataset {info['dataset']}  root {info['root']}"]
    splits = info["splits"]
    lines.append("samples: " + ", ".join(f"{s} {v['samples']:,}" for s, v in splits.items()))
    if any("identities" in v for v in splits.values()):
        lines.append("identities: " + ", ".join(f"{s} {v.get('identities', '-')}" for s, v in splits.items()))
    if info.get("identity_overlap"):
        lines.append("identities shared between splits: " + ", ".join(f"{k} {v}" for k, v in info["identity_overlap"].items()))
    targets = info["task"]["targets"]
    lines.append(f"targets ({len(targets)}): prevalence per split (binary: positive rate; others: class shares)")
    names = list(splits)
    lines.append(f"  {'target':<22} {'kind':<10} " + " ".join(f"{s:>8}" for s in names))
    for t in targets:
        if t["kind"] == "binary":
            vals = " ".join(f"{splits[s]['prevalence'][t['name']]:>8.3f}" for s in names)
            lines.append(f"  {t['name']:<22} {t['kind']:<10} {vals}")
        else:
            lines.append(f"  {t['name']:<22} {t['kind']:<10} {len(t['classes'])} classes")
            for c in t["classes"]:
                vals = " ".join(f"{splits[s]['prevalence'][t['name']].get(c, 0.0):>8.3f}" for s in names)
                lines.append(f"    {c:<20} {'':<10} {vals}")
    if "kappa" in info:
        overall = {k: v for k, v in info["kappa"].items() if "/" not in k}
        lines.append("rater agreement (Fleiss' kappa): " + ", ".join(f"{k} {v:.3f}" for k, v in overall.items()))
        for name in overall:
            per_class = {k.split("/", 1)[1]: v for k, v in info["kappa"].items() if k.startswith(name + "/")}
            if per_class:
                lines.append(f"  {name} per class: " + ", ".join(f"{c} {v:.3f}" for c, v in per_class.items()))
    if info.get("kappa_unavailable"):
        lines.append(f"rater agreement: {info['kappa_unavailable']}")
    for key in ("split", "ferplus", "raters", "malformed_names", "landmarks", "preprocess"):
        if key in info:
            lines.append(f"{key}: {info[key]}")
    dups = info.get("duplicates")
    if dups is not None:
        lines.append(f"duplicate images (same bytes): {len(dups)} group(s)" + "".join(f"\n  {' = '.join(g)}" for g in dups[:20]))
    cross = info.get("cross_split_duplicates")
    if cross is not None:
        lines.append(f"duplicate images across splits: {len(cross)} group(s)"
                     + "".join(f"\n  {' = '.join(g)}" for g in cross[:20]))
    if info.get("split_duplicate_groups"):
        lines.append(f"derived split: {info['split_duplicate_groups']} group(s) of duplicate images kept in one split")
    for split, d in (info.get("dedupe") or {}).items():
        lines.append(f"dedupe: {d['dropped']} {split} item(s) dropped (duplicates of training images)")
    for file, r in (info.get("repeated_rows") or {}).items():
        lines.append(f"repeated rows in {file}: {r['repeated']} image(s) listed more than once, {r['conflicting']} "
                     f"with conflicting rows ({r['policy']}: {r['rows_dropped']} row(s) dropped)")
    skipped = info.get("skipped") or []
    lines.append(f"files skipped: {len(skipped)}" + "".join(f"\n  {s}" for s in skipped[:20]))
    return "\n".join(lines)
