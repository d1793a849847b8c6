"""The evaluation report: ``report.json`` (everything), ``report.md`` (tables) and a PNG chart
of Dice per target for the model and the baselines, side by side."""

from __future__ import annotations

import json
from pathlib import Path

from . import differences

PERSPECTIVE_COLUMNS = (
    ("n", "samples"),
    ("dice", "Dice"),
    ("miou", "mIoU"),
    ("naming_accuracy", "naming acc."),
    ("exact_match", "exact match"),
    ("false_mask_rate", "false-mask rate"),
)
SYSTEM_NAMES = {"mimo_box": "MIMO + box", "mimo_text": "MIMO, text only", "litemedsam_box": "LiteMedSAM + box",
                "mimo_text_other_term": "MIMO asked for another term (lower is better)",
                "reference_other_term": "the other term's reference mask (what a perfect model scores in the previous column)"}


def _number(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _perspective_table(section: dict, title: str) -> list[str]:
    lines = [f"### {title}", "", "| perspective | " + " | ".join(name for _, name in PERSPECTIVE_COLUMNS) + " |",
             "|---" * (len(PERSPECTIVE_COLUMNS) + 1) + "|"]
    for perspective, summary in section.items():
        lines.append(f"| {perspective} | " + " | ".join(_number(summary.get(key)) for key, _ in PERSPECTIVE_COLUMNS) + " |")
    return lines + [""]


def _grouped_table(groups: dict, title: str, label: str) -> list[str]:
    columns = [c for c in PERSPECTIVE_COLUMNS if c[0] != "n"]
    lines = [f"### {title}", "", f"| {label} | perspective | n | " + " | ".join(name for _, name in columns) + " |",
             "|---" * (len(columns) + 3) + "|"]
    for group, section in groups.items():
        for perspective, summary in section.items():
            lines.append(f"| {group} | {perspective} | {summary['n']} | " + " | ".join(_number(summary.get(k)) for k, _ in columns) + " |")
    return lines + [""]


def _comparison_table(comparison: dict, key: str, label: str) -> list[str]:
    systems = comparison["systems"]
    lines = [f"| {label} | n | " + " | ".join(f"{SYSTEM_NAMES.get(s, s)} Dice" for s in systems) + " |",
             "|---" * (len(systems) + 2) + "|"]
    rows = [("all", comparison["overall"])] + list(comparison[key].items()) if key != "overall" else [("all", comparison["overall"])]
    for name, table in rows:
        count = max((table[s]["n"] for s in systems), default=0)
        lines.append(f"| {name} | {count} | " + " | ".join(_number(table[s]["dice"]) for s in systems) + " |")
    return lines + [""]


def signed(value: float) -> str:
    """A difference with its sign, to 3 decimals, or 4 where 3 would print a nonzero one as
    +0.000 (an interval end just above zero must not read as zero beside "higher")."""
    return f"{value:+.3f}" if value == 0 or abs(value) >= 0.0005 else f"{value:+.4f}"


def _difference_tables(comparison: dict) -> list[str]:
    lines = []
    for pair, sections in comparison.get("differences", {}).items():
        first, second = pair.split(" - ")
        lines += [f"### {SYSTEM_NAMES.get(first, first)} minus {SYSTEM_NAMES.get(second, second)}, Dice on the same masks", "",
                  (f"Mean paired difference and its {100 * differences.CONFIDENCE:g} % bootstrap interval, resampling whole image "
                   f"groups (patients, videos, near-duplicates); no interval with fewer than {differences.MIN_GROUPS} groups."), ""]
        for key, label in (("by_dataset", "dataset"), ("by_target", "target")):
            lines += [f"| {label} | masks | groups | mean difference | {100 * differences.CONFIDENCE:g} % interval | verdict |", "|---|---|---|---|---|---|"]
            rows = ([("all", sections["overall"])] if sections.get("overall") else []) + list(sections.get(key, {}).items())
            for name, d in rows:
                interval = f"{signed(d['low'])} .. {signed(d['high'])}" if d["low"] is not None else "-"
                lines.append(f"| {name} | {d['n']} | {d['groups']} | {signed(d['mean'])} | {interval} | {d['verdict']} |")
            lines.append("")
    return lines


def markdown(report: dict) -> str:
    model, data = report["model"], report["data"]
    lines = [
        "# MIMO evaluation",
        "",
        f"- command: `{report['command']}`",
        f"- model: `{model.get('path')}` ({model.get('preset')}, weights SHA-256 `{str(model.get('weights_sha256'))[:16]}`)",
        (f"- data: `{data['path']}` ({data['kind']}, split `{data['split']}`, {data['examples']} samples on {data['images']} images, "
         f"at most {data.get('max_per_dataset') or 'all'} images per dataset)"),
        f"- created {report['created']}; {report['timings'].get('total_s')} s",
        "",
        "Research use only: the data's licences are mostly research-only and nothing here is a clinical validation.",
        "",
        "## Per perspective",
        "",
        *_perspective_table(report["metrics"]["overall"], "All data"),
    ]
    comparison = report.get("baselines")
    if comparison and comparison["systems"]:
        lines += [
            "## Baselines: the same box for everyone",
            "",
            (f"Each reference mask: MIMO asked \"Segment the {{target}}.\" with a box (the mask's bounding box + "
             f"{comparison['box_margin_px']:g} px) and without any prompt; LiteMedSAM given the same box."),
            "",
            "### Dice per target",
            "",
            *_comparison_table(comparison, "by_target", "target"),
            "### Dice per dataset",
            "",
            *_comparison_table(comparison, "by_dataset", "dataset"),
            *_difference_tables(comparison),
        ]
        if report.get("chart"):
            lines += [f"![Dice per target]({Path(report['chart']).name})", ""]
    lines += [
        "## Breakdowns",
        "",
        *_grouped_table(report["metrics"]["by_dataset"], "Per dataset", "dataset"),
        *_grouped_table(report["metrics"]["by_modality"], "Per modality", "modality"),
        *_grouped_table(report["metrics"]["by_target"], "Per target", "target"),
        "## Timings",
        "",
        *(f"- {key}: {_number(value)}" for key, value in report["timings"].items()),
        "",
    ]
    return "\n".join(lines)


def chart(report: dict, path: Path) -> Path | None:
    """Grouped bars: Dice per target, one bar per system (model with box, without, LiteMedSAM)."""
    comparison = report.get("baselines") or {}
    systems = comparison.get("systems") or []
    targets = list((comparison.get("by_target") or {}).keys())
    if not systems or not targets:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    width = 0.8 / len(systems)
    positions = np.arange(len(targets))
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 * len(targets) + 2), 4.5), dpi=110)
    for k, system in enumerate(systems):
        values = [comparison["by_target"][t][system]["dice"] or 0.0 for t in targets]
        bars = axes.bar(positions + (k - (len(systems) - 1) / 2) * width, values, width, label=SYSTEM_NAMES.get(system, system))
        for bar, value in zip(bars, values):
            axes.text(bar.get_x() + bar.get_width() / 2, value + 0.01, f"{value:.2f}", ha="center", va="bottom", fontsize=7)
    counts = [max(comparison["by_target"][t][s]["n"] for s in systems) for t in targets]
    axes.set_xticks(positions, [f"{t}\n(n={n})" for t, n in zip(targets, counts)], fontsize=8)
    axes.set_ylim(0, 1.22)
    axes.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    axes.set_ylabel("Dice")
    model = report.get("model", {})
    path_parts = Path(str(model.get("path", "model"))).parts
    name = "/".join(path_parts[-2:]) if path_parts and path_parts[-1] == "final" else (path_parts[-1] if path_parts else "model")
    axes.set_title(f"Dice per target: {name} vs baselines ({report['data']['split']} split)", fontsize=10)
    axes.legend(fontsize=8, loc="upper center", ncol=len(systems), frameon=False)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def write_report(report: dict, out: str | Path) -> dict[str, Path]:
    """``out`` (JSON), the markdown beside it (same name, .md) and the chart (same name, .png)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = chart(report, out.with_suffix(".png"))
    report["chart"] = str(png) if png else None
    md = out.with_suffix(".md")
    md.write_text(markdown(report), encoding="utf-8")
    report["markdown"] = str(md)
    out.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    return {"json": out, "markdown": md, **({"chart": png} if png else {})}
