"""Compare runs: a table, plots and one self-contained HTML page (the local dashboard).

    python -m llm2vec.compare outputs/multirun/2026-11-29_20-00-00          # a sweep
    python -m llm2vec.compare run_dir_a run_dir_b --out report/             # chosen runs

A run dir is what run.py writes: `metrics.json`, `config.yaml` (resolved), `.hydra/overrides.yaml`
(what the sweep set) and `csv/metrics.csv` (training curves). The swept keys become the table's
columns; plots: score against every numeric swept key (e.g. mask ratio), grouped bars for two
categorical keys (e.g. pooling x variant), and the training loss curves.

Seeds: runs whose overrides differ only in `seed` (e.g. a sweep with `seed=1,2,3`) form one row
(`resume` and `stage.module.mini_batch_size` are ignored: they change how a run executes):
the mean of each metric over seeds, `n`, and for the score (STS test Spearman, else the first
Spearman or probe accuracy) its standard deviation and 95% t interval over seeds. The best row is
the one with the highest mean score; every other row gets its difference to the best, with a 95%
interval from a paired bootstrap over the test pairs (`sts_predictions.json` of each run; test pairs
and each row's seeds resampled, llm2vec.confidence), and is marked `≈ best` when its interval
overlaps the best row's (t intervals when both rows have several seeds; else the bootstrap interval
of the difference contains 0). Bars get error bars and score curves bands (the t intervals).
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

import numpy as np
import yaml

from llm2vec import atomic
from llm2vec.confidence import BOOTSTRAP_SAMPLES, SeedStats, paired_bootstrap_differences, seed_stats

SCORE_SUFFIXES = (".spearman", ".accuracy")
PREDICTIONS_FILE = "sts_predictions.json"  # written by llm2vec.evaluation for STS evaluations
# Overrides that change how a run executes, not what it trains, so they do not split a setting: a
# resumed run continues the same training (its data order and random state come from the checkpoint),
# and gradient caching gives the full batch's loss and gradients (llm2vec.gradient_cache).
EXECUTION_KEYS = ("resume", "stage.module.mini_batch_size")


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
    """One run: its overrides (key -> value, without `seed`), its seed, its flattened metrics and
    its training curve."""
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    swept = dict(item.split("=", 1) for item in overrides if "=" in item)
    swept = {key.lstrip("+~"): value for key, value in swept.items()}
    seed = swept.pop("seed", None)
    for key in EXECUTION_KEYS:
        swept.pop(key, None)
    if seed is None and (run_dir / "config.yaml").is_file():
        seed = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("seed")
    metrics = _flatten(json.loads((run_dir / "metrics.json").read_text()))
    metrics = {name: value for name, value in metrics.items() if not name.endswith(".pairs")}
    curve = read_curve(run_dir)
    metrics.update(training_cost(run_dir, curve))
    return {"run": str(run_dir), "swept": swept, "seed": seed, "metrics": metrics, "curve": curve,
            "has_overrides": overrides_file.is_file()}


def group_seeds(runs: list[dict]) -> list[dict]:
    """Runs whose overrides differ only in `seed` form one row (in the order of their first run):
    {"swept", "runs", "seeds", "metrics": {name: SeedStats}}. A run without Hydra overrides is a
    row of its own."""
    groups: dict = {}
    for run in runs:
        key = tuple(sorted(run["swept"].items())) if run["has_overrides"] else run["run"]
        groups.setdefault(key, []).append(run)
    rows = []
    for members in groups.values():
        names = list(dict.fromkeys(m for run in members for m in run["metrics"]))
        metrics = {name: seed_stats([run["metrics"].get(name, math.nan) for run in members]) for name in names}
        rows.append({"swept": members[0]["swept"], "runs": members, "seeds": [run["seed"] for run in members],
                     "metrics": metrics, "curve": members[0]["curve"]})
    return rows


def read_predictions(run_dir: str | Path, task: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(cosine per pair, gold per pair) of one STS task, or None when the run did not save them."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    task_predictions = json.loads(path.read_text()).get(task)
    if task_predictions is None:
        return None
    return np.asarray(task_predictions["predicted"], float), np.asarray(task_predictions["gold"], float)


def compare_to_best(rows: list[dict], metric: str | None, samples: int = BOOTSTRAP_SAMPLES) -> list[dict]:
    """Per row: {"best": bool, "difference": (row - best, low, high) or None, "overlaps": bool or
    None}. The difference's interval is the paired bootstrap over the test pairs when every run of
    both rows saved its predictions on the same pairs; else only the difference of means."""
    empty = [{"best": False, "difference": None, "overlaps": None} for _ in rows]
    means = [row["metrics"][metric].mean if metric in row["metrics"] else math.nan for row in rows]
    if metric is None or all(math.isnan(m) for m in means):
        return empty
    best = int(np.nanargmax(means))
    intervals = _bootstrap_differences(rows, metric, best, samples)
    comparison = []
    for index, row in enumerate(rows):
        if math.isnan(means[index]):
            comparison.append(empty[index])
            continue
        difference = intervals.get(index, (means[index] - means[best], math.nan, math.nan))
        comparison.append({"best": index == best, "difference": difference,
                           "overlaps": _overlaps(row["metrics"][metric], rows[best]["metrics"][metric], difference)})
    return comparison


def _bootstrap_differences(rows: list[dict], metric: str, best: int, samples: int) -> dict[int, tuple]:
    if not metric.endswith(".spearman"):
        return {}
    task = metric[: -len(".spearman")]
    predictions, gold = {}, None
    for index in [best] + [i for i in range(len(rows)) if i != best]:  # the best row's pairs decide
        loaded = [read_predictions(run["run"], task) for run in rows[index]["runs"]]
        if not loaded or any(item is None for item in loaded):
            continue
        if gold is None:
            gold = loaded[0][1]
        if all(np.array_equal(item[1], gold) for item in loaded):  # the same test pairs, in order
            predictions[index] = [item[0] for item in loaded]
    if best not in predictions or len(predictions) < 2:
        return {}
    return paired_bootstrap_differences(predictions, gold, reference=best, samples=samples)


def _overlaps(row: SeedStats, best: SeedStats, difference: tuple[float, float, float]) -> bool | None:
    if row.n >= 2 and best.n >= 2:
        return bool(row.high >= best.low and row.low <= best.high)
    if not math.isnan(difference[1]):
        return bool(difference[1] <= 0 <= difference[2])
    return None


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
    """The swept keys whose value differs between rows (the others are the same for all)."""
    keys = sorted({k for row in rows for k in row["swept"]})
    return [k for k in keys if len({row["swept"].get(k) for row in rows}) > 1 or len(rows) == 1]


def fixed_settings(rows: list[dict]) -> dict[str, str]:
    varied = set(varied_keys(rows))
    return {k: v for k, v in sorted(rows[0]["swept"].items()) if k not in varied}


def build_table(rows: list[dict], comparison: list[dict] | None = None) -> tuple[list[str], list[list[str]]]:
    """One line per row (seed group): the varied keys, n, each metric's mean over seeds; after the
    score: its std and 95% t interval over seeds, the difference to the best row with its interval,
    and whether the row's interval overlaps the best one's."""
    keys = varied_keys(rows)
    metric_names = sorted({m for row in rows for m in row["metrics"]}, key=_metric_order)
    score = score_metric(rows)
    comparison = comparison or compare_to_best(rows, score)
    statistics = ["± std", "95% CI", "Δ best", "Δ best 95% CI", "≈ best"] if score else []
    header = keys + ["n"]
    for name in metric_names:
        header += [name] + (statistics if name == score else [])
    body = []
    for row, versus in zip(rows, comparison):
        cells = [row["swept"].get(k, "") for k in keys] + [str(len(row["runs"]))]
        for name in metric_names:
            stats = row["metrics"].get(name)
            cells.append(_fmt(stats.mean if stats else None))
            if name == score:
                cells += _score_cells(stats, versus)
        body.append(cells)
    return header, body


def _score_cells(stats: SeedStats | None, versus: dict) -> list[str]:
    if stats is None:
        return [""] * 5
    difference = versus["difference"]
    mark = {True: "yes", False: "no", None: ""}[versus["overlaps"]]
    return [
        _fmt(stats.std),
        _interval(stats.low, stats.high),
        "" if versus["best"] or difference is None else _fmt(difference[0]),
        "" if versus["best"] or difference is None else _interval(difference[1], difference[2]),
        "best" if versus["best"] else mark,
    ]


def _interval(low: float, high: float) -> str:
    return "" if math.isnan(low) else f"[{_fmt(low)}, {_fmt(high)}]"


def _metric_order(name: str):
    return (not name.endswith(SCORE_SUFFIXES), name)


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.2f}" if abs(value) < 1e4 else f"{value:.0f}"


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def score_metric(rows: list[dict]) -> str | None:
    """The score the plots and intervals use: STS test Spearman if present, else the first
    Spearman, else the first probe accuracy."""
    names = sorted({m for row in rows for m in row["metrics"]})
    spearman = [n for n in names if n.endswith(".spearman")]
    preferred = [n for n in spearman if "test" in n.lower()]
    accuracy = [n for n in names if n.endswith(".accuracy")]
    return (preferred or spearman or accuracy[:1] or [None])[-1]


def _mean(row: dict, metric: str) -> float:
    return row["metrics"][metric].mean if metric in row["metrics"] else math.nan


def _error(row: dict, metric: str) -> tuple[float, float]:
    """The t interval as (below, above) the mean; nan with one seed."""
    stats = row["metrics"].get(metric)
    if stats is None or math.isnan(stats.low):
        return math.nan, math.nan
    return stats.mean - stats.low, stats.high - stats.mean


def plot_runs(rows: list[dict], out: Path) -> list[Path]:
    """Plots of the rows (seed groups): score curves with a band for the t interval, grouped bars
    with error bars, and every run's training curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = score_metric(rows)
    # Settings, not the paths of the runs a row builds on (e.g. mntp_run: it follows from the others);
    # one row (its seeds) has no setting to plot the score against.
    swept = varied_keys(rows) if len(rows) > 1 else []
    keys = [k for k in swept if not any("/" in row["swept"].get(k, "") for row in rows)]
    numeric = [k for k in keys if all(_is_number(row["swept"].get(k, "")) for row in rows)]
    # A categorical key that a plotted number decides says nothing the curve does not (e.g. the
    # variant and masking that come with MNTP 0 / 250 steps): bars of it would repeat the curve.
    categorical = [k for k in keys if k not in numeric and not any(_decided_by(rows, n, k) for n in numeric)]
    written = []
    for key in numeric if metric else []:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        # One curve per value of the keys `key` does not decide (e.g. not the MNTP run that comes with
        # a number of MNTP steps).
        hue_keys = [k for k in keys if k != key and not _decided_by(rows, key, k)]
        for label, group in _group(rows, hue_keys).items():
            group = sorted(group, key=lambda r: float(r["swept"][key]))
            xs = [float(r["swept"][key]) for r in group]
            (line,) = ax.plot(xs, [_mean(r, metric) for r in group], marker="o", label=label or None)
            errors = np.array([_error(r, metric) for r in group])
            if not np.isnan(errors).all():
                means = np.array([_mean(r, metric) for r in group])
                ax.fill_between(xs, means - errors[:, 0], means + errors[:, 1], color=line.get_color(), alpha=0.2)
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
    runs = [run for row in rows for run in row["runs"]]
    curves = [(r, name, pts) for r in runs for name, pts in r["curve"].items()]
    trained = [r for r in runs if r["curve"]]
    curve_keys = varied_keys(trained) if len(trained) > 1 else []  # what tells the curves apart
    seeded = len({r["seed"] for r in trained}) > 1
    if curves:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for run, name, points in curves:
            label = ", ".join(f"{k}={run['swept'].get(k, '')}" for k in curve_keys) or Path(run["run"]).name
            label += f", seed={run['seed']}" if seeded else ""
            ax.plot(*zip(*sorted(points)), label=f"{label} ({name})")
        ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.grid(alpha=0.3)
        # below the axes: a label names every swept setting, too long to sit over the curves
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(0, -0.18))
        written.append(_save(fig, out / "training_curves.png"))
    return written


def _grouped_bars(rows, metric, x_key, hue_keys, path, plt):
    groups = _group(rows, hue_keys)
    xs = list(dict.fromkeys(r["swept"].get(x_key, "") for r in rows))  # in run order: the sweep's order
    width = 0.8 / max(len(groups), 1)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(xs) * max(len(groups), 1) * 0.5), 3.5))
    for index, (label, group) in enumerate(groups.items()):
        by_x = {r["swept"].get(x_key, ""): r for r in group}
        heights = [_mean(by_x[x], metric) if x in by_x else math.nan for x in xs]
        errors = np.array([_error(by_x[x], metric) if x in by_x else (math.nan, math.nan) for x in xs]).T
        ax.bar([i + index * width for i in range(len(xs))], heights, width, label=label or metric,
               yerr=None if np.isnan(errors).all() else errors, capsize=2)
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
        fig.savefig(temp, dpi=110, format=path.suffix.lstrip(".") or "png", bbox_inches="tight")
    fig.clf()
    return path


def html_page(title: str, header: list[str], body: list[list[str]], images: list[Path], fixed: str = "",
              note: str = "") -> str:
    """The table (the best row bold, rows whose interval overlaps the best one's shaded), the note
    on the statistics, and the plots inlined."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    mark = header.index("≈ best") if "≈ best" in header else None
    classes = {"best": " class='best'", "yes": " class='overlaps'"}
    rows = "".join(
        f"<tr{classes.get(cells[mark], '') if mark is not None else ''}>"
        + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
        for cells in body
    )
    figures = "".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(p.stem)}</figcaption></figure>'
        for p in images
    )
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}figure{display:inline-block}"
             "tr.best{font-weight:bold}tr.overlaps{background:#fff3c4}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>All runs: {html.escape(fixed or '-')}</p><p>{html.escape(note)}</p>"
            f"<table><tr>{head}</tr>{rows}</table>{figures}</body></html>\n")


def statistics_note(rows: list[dict], comparison: list[dict]) -> str:
    metric = score_metric(rows)
    if metric is None:
        return ""
    seeds = sorted({str(s) for row in rows for s in row["seeds"] if s is not None})
    bootstrap = any(not math.isnan(c["difference"][1]) for c in comparison if c["difference"])
    return (f"Rows: runs that differ only in seed (n runs; seeds {', '.join(seeds) or '-'}); metrics are means over "
            f"seeds. {metric}: ± std and 95% CI (t over seeds); Δ best: difference to the best row"
            + (f", 95% CI from a paired bootstrap over the test pairs ({BOOTSTRAP_SAMPLES} resamples, seeds "
               "resampled too)" if bootstrap else " (no saved predictions: no bootstrap interval)")
            + "; ≈ best (shaded): the row's interval overlaps the best one's.")


def compare(paths: list[Path], out: Path, title: str = "llm2vec runs") -> dict[str, Path]:
    rows = group_seeds([read_run(run) for run in find_runs(paths)])
    out.mkdir(parents=True, exist_ok=True)
    comparison = compare_to_best(rows, score_metric(rows))
    header, body = build_table(rows, comparison)
    fixed = ", ".join(f"{k}={v}" for k, v in fixed_settings(rows).items())
    note = statistics_note(rows, comparison)
    atomic.write_text(out / "results.md", f"{title}\n\nAll runs: {fixed or '-'}\n\n{note}\n\n" + markdown_table(header, body))
    table = io.StringIO(newline="")
    csv.writer(table).writerows([header, *body])
    atomic.write_text(out / "results.csv", table.getvalue())
    images = plot_runs(rows, out)
    atomic.write_text(out / "index.html", html_page(title, header, body, images, fixed, note))
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
