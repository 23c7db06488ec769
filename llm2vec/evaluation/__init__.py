"""Evaluation: STS suites (sts.py), MTEB (mteb.py, needs the `eval` extra) and word-level probes
(probes.py; on Universal Dependencies CoNLL-U files: ud.py). `run_evaluation` runs whichever one
an eval config (conf/eval/*.yaml) describes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llm2vec import atomic

EVAL_KINDS = ("sts", "mteb", "probes", "probes_ud")
STS_PREDICTIONS = "sts_predictions.json"  # each pair's cosine and gold score, for llm2vec.compare


def run_evaluation(encoder, config: dict, run_dir: str | Path) -> dict:
    """Run the evaluation that `config` (one conf/eval/*.yaml as a plain dict) describes, print its
    table and write `<run_dir>/<kind>.json` (STS also writes each pair's cosine and gold score to
    `<run_dir>/sts_predictions.json`). `kind` picks the evaluation (default `sts`); the other
    keys are the arguments of `run_sts_suite`, `run_mteb`, `run_probes` or `run_ud_probes`.

    Returns {"kind", "results": {task: scores}, "skipped": {task: why}, "main_score"}, where
    main_score is the mean Spearman (sts), main score (mteb) or probe accuracy (probes, probes_ud), x100,
    over the tasks that ran (None if none did)."""
    config = dict(config)
    kind = config.pop("kind", "sts")
    if kind not in EVAL_KINDS:
        raise ValueError(f"unknown eval kind {kind!r}: choose {', '.join(EVAL_KINDS)}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if kind == "sts":
        from llm2vec.evaluation.sts import format_table, run_sts_suite

        results, skipped = run_sts_suite(encoder, **config, predictions_file=run_dir / STS_PREDICTIONS)
        main_key, table = "spearman", format_table(results, skipped)
    elif kind == "mteb":
        from llm2vec.evaluation.mteb import format_mteb_table, run_mteb

        output_folder = run_dir / config.pop("output_folder", "mteb")
        results, skipped = run_mteb(encoder, output_folder=output_folder, **config)
        main_key, table = "main_score", format_mteb_table(results, skipped)
    elif kind == "probes":
        from llm2vec.evaluation.probes import format_probe_table, run_probes

        results, skipped = run_probes(encoder, **config)
        main_key, table = "accuracy", format_probe_table(results, skipped)
    else:
        from llm2vec.evaluation.probes import format_probe_table
        from llm2vec.evaluation.ud import run_ud_probes

        results, skipped = run_ud_probes(encoder, **config)
        main_key, table = "accuracy", format_probe_table(results, skipped)
    main_score = float(np.mean([r[main_key] for r in results.values()])) if results else None
    summary = {"kind": kind, "results": results, "skipped": skipped, "main_score": main_score}
    print(f"\n== {kind} ({encoder.base_model_name_or_path}, pooling={encoder.pooling_mode}, "
          f"bidirectional={encoder.bidirectional})\n{table}", flush=True)
    atomic.write_json(run_dir / f"{kind}.json", summary)
    return summary
