"""MTEB: the installed `mteb` package's encoder interface around an `LLM2Vec` encoder.

As in the paper, queries (and both sides of symmetric tasks such as STS) are embedded after the task's
instruction; documents are embedded without one. An instruction comes from `instructions` (keys: a
task name, a task type such as `Retrieval`, or `query`), else from the task's own prompt in mteb,
and is written the LLM2Vec way, ending in a colon.

    from llm2vec.evaluation.mteb import run_mteb
    results, skipped = run_mteb(encoder, ["STS12", "SciFact"], output_folder="outputs/mteb")

Needs the `eval` extra (`pip install "llm2vec-lightning[eval]"`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from llm2vec.evaluation.hub import hub_unreachable_reason

logger = logging.getLogger(__name__)


def llm2vec_instruction(instruction: str) -> str:
    """'Retrieve semantically similar text.' -> 'Retrieve semantically similar text:'"""
    instruction = instruction.strip()
    if instruction and not instruction.endswith(":"):
        instruction = instruction.rstrip(".") + ":"
    return instruction


class MTEBEncoder(AbsEncoder):
    """mteb's `EncoderProtocol` for an `LLM2Vec` encoder (cosine similarity)."""

    def __init__(self, encoder, instructions: dict[str, str] | None = None, name: str | None = None,
                 revision: str | None = None):
        self.model = encoder
        self.prompts_dict = dict(instructions or {})  # read by AbsEncoder.get_instruction
        base = Path(str(encoder.base_model_name_or_path or "encoder")).name
        self.mteb_model_meta = ModelMeta.create_empty(overwrites={
            "name": name or f"llm2vec-lightning/{base}",
            "revision": revision or f"{encoder.pooling_mode}-{'bi' if encoder.bidirectional else 'uni'}directional",
            "embed_dim": encoder.model.config.hidden_size,
            "max_tokens": encoder.max_length,
            "similarity_fn_name": ScoringFunction.COSINE,
            "use_instructions": True,
            "framework": ["PyTorch"],
        })

    def instruction_for(self, task_metadata, prompt_type: PromptType | None) -> str:
        if prompt_type == PromptType.document:
            return ""
        return llm2vec_instruction(self.get_instruction(task_metadata, prompt_type) or "")

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs: Any):
        texts = [text for batch in inputs for text in batch["text"]]
        instruction = self.instruction_for(task_metadata, prompt_type)
        items = [[instruction, text] for text in texts] if instruction else texts
        return self.model.encode(
            items, batch_size=kwargs.get("batch_size", 32), show_progress_bar=kwargs.get("show_progress_bar")
        )


def run_mteb(encoder, tasks: list, output_folder: str | Path, instructions: dict[str, str] | None = None,
             batch_size: int = 32, languages: list[str] | None = None, name: str | None = None,
             revision: str | None = None, overwrite: bool = True) -> tuple[dict[str, dict], dict[str, str]]:
    """Run MTEB tasks (names or mteb task objects); mteb writes its result files under
    `output_folder/results/<model>/<revision>/`. Returns ({task: summary}, {skipped task: why})."""
    import mteb

    task_objects = [t for t in tasks if not isinstance(t, str)]
    names = [t for t in tasks if isinstance(t, str)]
    hub_tasks = list(mteb.get_tasks(tasks=names, languages=languages)) if names else []
    skipped = {}
    reason = hub_unreachable_reason() if hub_tasks else None
    if reason and not _datasets_offline_mode():  # offline mode reads the datasets cache: let mteb try
        for task in hub_tasks:
            skipped[task.metadata.name] = f"its data is on the hub and {reason}"
            logger.warning("skipped MTEB task %s: %s", task.metadata.name, skipped[task.metadata.name])
    else:
        task_objects += hub_tasks
    if not task_objects:
        return {}, skipped
    model = MTEBEncoder(encoder, instructions, name, revision)
    result = mteb.evaluate(
        model,
        task_objects,
        encode_kwargs={"batch_size": batch_size},
        cache=mteb.ResultCache(cache_path=Path(output_folder)),
        overwrite_strategy="always" if overwrite else "only-missing",
        raise_error=False,
        show_progress_bar=False,
        co2_tracker=False,
    )
    for error in result.exceptions or []:
        skipped[error.task_name] = f"failed: {error.exception}"
        logger.warning("MTEB task %s failed: %s", error.task_name, error.exception)
    results = {
        task_result.task_name: {"main_score": 100 * float(task_result.get_score())}
        for task_result in result.task_results
    }
    return results, skipped


def _datasets_offline_mode() -> bool:
    import datasets

    return bool(datasets.config.HF_HUB_OFFLINE)


def format_mteb_table(results: dict[str, dict], skipped: dict[str, str] | None = None) -> str:
    lines = [f"{'task':<32} {'main score':>10}"]
    for name, summary in results.items():
        lines.append(f"{name:<32} {summary['main_score']:10.2f}")
    for name, reason in (skipped or {}).items():
        lines.append(f"{name:<32} skipped: {reason}")
    return "\n".join(lines)
