"""What the CPU hour buys: STS-B dev and test against training minutes, one point per recipe.

    python experiments/score_vs_minutes.py experiments/score_vs_minutes.yaml \
        --runs experiments/runs --out experiments/results/score_vs_minutes

The spec (YAML) lists recipes, each with the evaluations that score it and the training runs that
made it (run dirs holding one `seed<N>` dir per seed, relative to --runs):

    recipes:
      - model: Gemma-3-270M
        label: make run
        scores: wiki_recipe-gemma3_270m/mntp250-simcse125-t0.1-d0.3-random-layer13/no_instruction
        training: [gemma3_270m/mntp-250steps-r0.2-bert-blank, gemma3_270m/simcse-125-...-random]
        pooled: null     # or the seeds one encoder was made from, e.g. [1, 2, 3] (a soup of seeds)

A seed's training minutes are the sum of its training runs' `train.json` seconds (run.py writes
them: training alone, no evaluation or loading); a pooled recipe's one encoder costs the sum over
its seeds of their training runs. Optional keys: `lines` (name -> a test score to draw, e.g. the
target), `floor` (task -> the lowest score the plot's axis shows; lower points sit on it, labelled),
`cpu` (the x axis's machine). Scores are the mean over the evaluated seeds with a 95% t interval
(`llm2vec.confidence.seed_stats`). Writes results.md (the table) and score_vs_minutes.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from llm2vec.compare import training_cost
from llm2vec.confidence import SeedStats, seed_stats

TASKS = ("STSB-dev", "STSB-test")


def seed_dirs(setting: Path) -> dict[str, Path]:
    """seed name (seed1, ...) -> run dir of one setting."""
    if not setting.is_dir():
        raise FileNotFoundError(f"{setting}: no such setting dir")
    seeds = {p.name: p for p in sorted(setting.glob("seed*")) if p.is_dir()}
    if not seeds:
        raise FileNotFoundError(f"{setting}: no seed<N> dirs below it")
    return seeds


def training_seconds(run_dir: Path) -> float:
    seconds = training_cost(run_dir, {}).get("train.seconds")  # llm2vec.compare reads run.py's train.json
    if seconds is None:
        raise FileNotFoundError(f"{run_dir}: no train.json (not a finished training run?)")
    return seconds


def recipe_minutes(scored: list[str], training: list[Path], pooled: list[int] | None) -> list[float]:
    """Training minutes of each scored seed; a pooled recipe's one encoder costs its seeds' runs."""
    trained = [seed_dirs(setting) for setting in training]
    minutes = []
    for seed in [f"seed{number}" for number in pooled] if pooled else scored:
        missing = [str(setting) for setting, runs in zip(training, trained) if seed not in runs]
        if missing:
            raise FileNotFoundError(f"{seed} was scored but not trained under {', '.join(missing)}")
        minutes.append(sum(training_seconds(runs[seed]) for runs in trained) / 60)
    return [sum(minutes)] if pooled else minutes


def read_recipe(recipe: dict, runs: Path) -> dict:
    """One row: the recipe's model and label, minutes per seed, and SeedStats per task."""
    scored = seed_dirs(runs / recipe["scores"])
    scores = {task: [] for task in TASKS}
    for run in scored.values():
        metrics = json.loads((run / "metrics.json").read_text())
        missing = [task for task in TASKS if task not in metrics]
        if missing:
            raise ValueError(f"{run}: no {', '.join(missing)} in metrics.json (score it with stage=eval eval=stsb)")
        for task in TASKS:
            scores[task].append(metrics[task]["spearman"])  # x100, as llm2vec.evaluation writes it
    training = [runs / setting for setting in recipe["training"]]
    return {"model": recipe["model"], "label": recipe["label"], "seeds": list(scored),
            "minutes": recipe_minutes(list(scored), training, recipe.get("pooled")),
            "scores": {task: seed_stats(values) for task, values in scores.items()}}


def markdown(rows: list[dict]) -> str:
    lines = ["| model | recipe | seeds | training minutes a seed | STS-B dev | STS-B test [95% t interval] |",
             "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        minutes = row["minutes"]
        spread = f"{min(minutes):.1f}" if len(minutes) == 1 else f"{min(minutes):.1f}-{max(minutes):.1f}"
        lines.append(f"| {row['model']} | {row['label']} | {len(row['seeds'])} | {spread} | "
                     f"{row['scores']['STSB-dev'].mean:.2f} | {_with_interval(row['scores']['STSB-test'])} |")
    return "\n".join(lines) + "\n"


def _with_interval(stats: SeedStats) -> str:
    if stats.n < 2:
        return f"{stats.mean:.2f} (one encoder)"
    return f"{stats.mean:.2f} [{stats.low:.2f}, {stats.high:.2f}]"


def plot(rows: list[dict], path: Path, lines: dict[str, float], floor: dict[str, float], cpu: str) -> Path:
    """Test and dev against minutes: a colour and marker per model, filled for a mean over seeds (with
    its t interval), open for one encoder; a point under the task's floor sits on the floor as a
    triangle labelled with its score, so the recipes near the target keep the axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    models = list(dict.fromkeys(row["model"] for row in rows))
    colours = dict(zip(models, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    markers = dict(zip(models, "osD^vP"))
    for ax, task in zip(axes, TASKS):
        low, under = floor.get(task, -np.inf), 0
        for number, row in enumerate(rows, 1):
            stats, x, colour = row["scores"][task], float(np.mean(row["minutes"])), colours[row["model"]]
            if stats.mean < low:
                ax.plot(x, low, marker="v", color=colour, linestyle="none")
                ax.annotate(f"{number}: {stats.mean:.1f}", (x, low), textcoords="offset points",
                            xytext=(5, 2 + 9 * under), fontsize=7)
                under += 1
                continue
            error = None if stats.n < 2 else [[stats.mean - stats.low], [stats.high - stats.mean]]
            ax.errorbar(x, stats.mean, yerr=error, marker=markers[row["model"]], linestyle="none", capsize=3,
                        color=colour, markerfacecolor=colour if stats.n > 1 else "white", label=row["model"])
            ax.annotate(str(number), (x, stats.mean), textcoords="offset points", xytext=(5, -9), fontsize=7)
        if task == "STSB-test":
            for side, (name, value) in enumerate(lines.items()):
                ax.axhline(value, linestyle="--", linewidth=0.8, color="grey")
                # labels alternate left and right: close lines (77, 76.85) would print over each other
                ax.annotate(name, (ax.get_xlim()[side % 2], value), textcoords="offset points",
                            xytext=(4 - 8 * (side % 2), 2), ha="right" if side % 2 else "left", fontsize=7,
                            color="grey")
        if np.isfinite(low):
            ax.set_ylim(bottom=low - 0.5)
        ax.set_title(f"{task} Spearman x100 (filled: mean of seeds, 95% t interval; open: one encoder)",
                     fontsize=8)
        ax.set_xlabel(f"training minutes a seed ({cpu})"), ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = {}
    for label, handle in zip(labels, handles):
        unique.setdefault(label, handle)  # a model's first point: its filled marker
    axes[0].legend(unique.values(), unique.keys(), fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path,
                        help="YAML: recipes (model, label, scores, training, pooled), lines, floor, cpu")
    parser.add_argument("--runs", type=Path, default=Path("experiments/runs"), help="where the spec's dirs are")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    spec = yaml.safe_load(args.spec.read_text())
    rows = [read_recipe(recipe, args.runs) for recipe in spec["recipes"]]
    table = markdown(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    numbered = "\n".join(f"{n}. {row['model']}: {row['label']}" for n, row in enumerate(rows, 1))
    (args.out / "results.md").write_text(f"# {spec.get('title', 'Score against training minutes')}\n\n"
                                         f"{table}\nPoints in score_vs_minutes.png:\n\n{numbered}\n")
    plot(rows, args.out / "score_vs_minutes.png", spec.get("lines", {}), spec.get("floor", {}),
         spec.get("cpu", "this CPU"))
    print(table)


if __name__ == "__main__":
    main()
