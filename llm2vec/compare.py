"""Compare runs: a table, plots and one self-contained HTML page (the local dashboard).

    python -m llm2vec.compare outputs/multirun/2026-11-29_20-00-00          # a sweep
    python -m llm2vec.compare run_dir_a run_dir_b --out report/             # chosen runs

A run dir is what run.py writes: `metrics.json`, `config.yaml` (resolved), `.hydra/overrides.yaml`
(what the sweep set) and `csv/metrics.csv` (training curves). The swept keys become the table's
columns; plots: score against every numeric swept key (e.g. mask ratio), grouped bars for two
categorical keys (e.g. pooling x variant), and the training loss curves.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
from pathlib import Path

import yaml

from llm2vec import atomic

SCORE_SUFFIX = ".spearman"


def find_runs(paths: list[Path]) -> list[Path]:
    """Run dirs below the given paths (a multirun dir holds one per job)."""
    runs = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"run or sweep dir {str(path)!r} does not exist")
        runs += sorted({p.parent for p in path.rglob("metrics.json")}, key=_natural_key)
    if not runs:
        raise FileNotFoundError(f"no metrics.json below {', '.join(map(str, paths))}: are these run.py output dirs?")
    return runs


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part for part in path.parts]


def read_run(run_dir: Path) -> dict:
    """One row: the run's overrides (key -> value), its flattened metrics and its training curve."""
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    swept = dict(item.split("=", 1) for item in overrides if "=" in item)
    swept = {key.lstrip("+~"): value for key, value in swept.items()}
    metrics = _flatten(json.loads((run_dir / "metrics.json").read_text()))
    metrics = {name: value for name, value in metrics.items() if not name.endswith(".pairs")}
    curve = read_curve(run_dir)
    metrics.update(training_cost(run_dir, curve))
    return {"run": str(run_dir), "swept": swept, "metrics": metrics, "curve": curve}


def training_cost(run_dir: Path, curve: dict) -> dict[str, float]:
    """train.steps and train.seconds from run.py's train.json; steps from the curve for older runs."""
    cost_file = run_dir / "train.json"
    if cost_file.is_file():
        cost = json.loads(cost_file.read_text())
        return {"train.steps": float(cost["steps"]), "train.seconds": float(cost["seconds"])}
    steps = [step for points in curve.values() for step, _ in points]
    return {"train.steps": max(steps) + 1} if steps else {}


def _flatten(tree: dict, prefix: str = "") -> dict[str, float]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def read_curve(run_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """Training curves from Lightning's CSVLogger files: metric -> [(step, value)]."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for metrics_csv in sorted(run_dir.rglob("metrics.csv")):
        with metrics_csv.open(newline="") as handle:
            for row in csv.DictReader(handle):
                step = row.get("step")
                for key, value in row.items():
                    if key in ("step", "epoch") or not value or not step or "loss" not in key:
                        continue
                    curves.setdefault(key, []).append((float(step), float(value)))
    return curves


def varied_keys(rows: list[dict]) -> list[str]:
    """The swept keys whose value differs between runs (the others are the same for all)."""
    keys = sorted({k for row in rows for k in row["swept"]})
    return [k for k in keys if len({row["swept"].get(k) for row in rows}) > 1 or len(rows) == 1]


def fixed_settings(rows: list[dict]) -> dict[str, str]:
    varied = set(varied_keys(rows))
    return {k: v for k, v in sorted(rows[0]["swept"].items()) if k not in varied}


def build_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    keys = varied_keys(rows)
    metric_names = sorted({m for row in rows for m in row["metrics"]}, key=_metric_order)
    header = keys + metric_names
    body = []
    for row in rows:
        cells = [row["swept"].get(k, "") for k in keys]
        cells += [_fmt(row["metrics"].get(m)) for m in metric_names]
        body.append(cells)
    return header, body


def _metric_order(name: str):
    return (not name.endswith(SCORE_SUFFIX), name)


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.2f}" if abs(value) < 1e4 else f"{value:.0f}"


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def score_metric(rows: list[dict]) -> str | None:
    """The score the plots show: STS-B test Spearman if present, else the first Spearman."""
    names = sorted({m for row in rows for m in row["metrics"] if m.endswith(SCORE_SUFFIX)})
    preferred = [n for n in names if "test" in n.lower()]
    return (preferred or names or [None])[-1]


def plot_runs(rows: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = score_metric(rows)
    keys = varied_keys(rows)
    numeric = [k for k in keys if all(_is_number(row["swept"].get(k, "")) for row in rows)]
    categorical = [k for k in keys if k not in numeric]
    written = []
    for key in numeric if metric else []:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for label, group in _group(rows, [k for k in keys if k != key]).items():
            points = sorted((float(r["swept"][key]), r["metrics"].get(metric, math.nan)) for r in group)
            ax.plot(*zip(*points), marker="o", label=label or None)
        ax.set_xlabel(key), ax.set_ylabel(metric), ax.grid(alpha=0.3)
        if len(ax.get_lines()) > 1:
            ax.legend(fontsize=7)
        written.append(_save(fig, out / f"score_vs_{_slug(key)}.png"))
    if metric and categorical:
        # Bars along the categorical key with the most values (e.g. variant), one colour per value
        # of the keys it does not decide (e.g. pooling; not the SimCSE-only keys that come with a variant).
        x_key = max(categorical, key=lambda k: len({r["swept"].get(k) for r in rows}))
        hue_keys = [k for k in keys if k != x_key and not _decided_by(rows, x_key, k)]
        written.append(_grouped_bars(rows, metric, x_key, hue_keys, out / f"bars_{_slug(x_key)}.png", plt))
    curves = [(r, name, pts) for r in rows for name, pts in r["curve"].items()]
    trained = [r for r in rows if r["curve"]]
    curve_keys = varied_keys(trained) if len(trained) > 1 else []  # what tells the curves apart
    if curves:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for row, name, points in curves:
            label = ", ".join(f"{k}={row['swept'].get(k, '')}" for k in curve_keys) or Path(row["run"]).name
            ax.plot(*zip(*sorted(points)), label=f"{label} ({name})")
        ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.grid(alpha=0.3), ax.legend(fontsize=6)
        written.append(_save(fig, out / "training_curves.png"))
    return written


def _grouped_bars(rows, metric, x_key, hue_keys, path, plt):
    groups = _group(rows, hue_keys)
    xs = list(dict.fromkeys(r["swept"].get(x_key, "") for r in rows))  # in run order: the sweep's order
    width = 0.8 / max(len(groups), 1)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(xs) * max(len(groups), 1) * 0.5), 3.5))
    for index, (label, group) in enumerate(groups.items()):
        by_x = {r["swept"].get(x_key, ""): r["metrics"].get(metric, math.nan) for r in group}
        ax.bar([i + index * width for i in range(len(xs))], [by_x.get(x, math.nan) for x in xs],
               width, label=label or metric)
    ax.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(xs))], xs)
    ax.set_xlabel(x_key), ax.set_ylabel(metric), ax.legend(fontsize=7), ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def _decided_by(rows: list[dict], key: str, other: str) -> bool:
    """Whether each value of `key` comes with a single value of `other`."""
    seen: dict = {}
    return all(seen.setdefault(r["swept"].get(key), r["swept"].get(other)) == r["swept"].get(other) for r in rows)


def _group(rows: list[dict], keys: list[str]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        label = ", ".join(f"{k}={row['swept'].get(k, '')}" for k in keys)
        groups.setdefault(label, []).append(row)
    return groups


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic.replacing(path) as temp:
        fig.savefig(temp, dpi=110, format=path.suffix.lstrip(".") or "png")
    fig.clf()
    return path


def html_page(title: str, header: list[str], body: list[list[str]], images: list[Path], fixed: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body)
    figures = "".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(p.stem)}</figcaption></figure>'
        for p in images
    )
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}figure{display:inline-block}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>All runs: {html.escape(fixed or '-')}</p>"
            f"<table><tr>{head}</tr>{rows}</table>{figures}</body></html>\n")


def compare(paths: list[Path], out: Path, title: str = "llm2vec runs") -> dict[str, Path]:
    rows = [read_run(run) for run in find_runs(paths)]
    out.mkdir(parents=True, exist_ok=True)
    header, body = build_table(rows)
    fixed = ", ".join(f"{k}={v}" for k, v in fixed_settings(rows).items())
    atomic.write_text(out / "results.md", f"{title}\n\nAll runs: {fixed or '-'}\n\n" + markdown_table(header, body))
    table = io.StringIO(newline="")
    csv.writer(table).writerows([header, *body])
    atomic.write_text(out / "results.csv", table.getvalue())
    images = plot_runs(rows, out)
    atomic.write_text(out / "index.html", html_page(title, header, body, images, fixed))
    return {"markdown": out / "results.md", "csv": out / "results.csv", "html": out / "index.html"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="a multirun dir, or run dirs")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the first path)/compare")
    parser.add_argument("--title", default="llm2vec runs")
    args = parser.parse_args(argv)
    written = compare(args.paths, args.out or args.paths[0] / "compare", args.title)
    print((written["markdown"]).read_text())
    print(f"dashboard: {written['html']}")


if __name__ == "__main__":
    main()
