"""The MTEB wrapper, offline: tiny tasks built here from in-memory data run through `mteb.evaluate`."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from datasets import Dataset, DatasetDict

mteb = pytest.importorskip("mteb")
from mteb.abstasks.retrieval import AbsTaskRetrieval  # noqa: E402
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData  # noqa: E402
from mteb.abstasks.sts import AbsTaskSTS  # noqa: E402
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402
from mteb.types import PromptType  # noqa: E402

from llm2vec import LLM2Vec  # noqa: E402
from llm2vec.evaluation import run_evaluation  # noqa: E402
from llm2vec.evaluation.mteb import MTEBEncoder, llm2vec_instruction, run_mteb  # noqa: E402
from llm2vec.evaluation.sts import STSPairs, evaluate_sts  # noqa: E402

METADATA = dict(
    description="A tiny task built in the test.", reference="https://example.com",
    dataset={"path": "local/tiny", "revision": "1"}, category="t2t", eval_splits=["test"],
    eval_langs=["eng-Latn"], date=("2024-01-01", "2024-01-01"), dialect=[], domains=[], task_subtypes=[],
    license="cc-by-4.0", annotations_creators="derived", modalities=["text"], sample_creation="found",
    bibtex_citation="",
)
STS_PAIRS = [
    ("A man is playing a guitar.", "A man is playing a guitar.", 5.0),
    ("A woman is slicing an onion.", "A woman is cutting an onion.", 4.2),
    ("Two dogs run across the field.", "Two dogs are running in a field.", 4.0),
    ("The stock market fell sharply today.", "Shares dropped a lot on Monday.", 3.1),
    ("A child is reading a book.", "A kid reads a story book quietly.", 3.4),
    ("The sun is hot.", "A man is playing a guitar.", 0.0),
    ("Rain is expected tomorrow.", "Two dogs run across the field.", 0.2),
    ("A cat sleeps on the sofa.", "The stock market fell sharply today.", 0.1),
]
DOCUMENTS = ["The cat sat on the mat.", "Stock markets fell sharply today.", "Rain is expected tomorrow.",
             "He plays the guitar every evening.", "A recipe for onion soup."]


class TinySTS(AbsTaskSTS):
    metadata = TaskMetadata(type="STS", name="TinySTS", main_score="cosine_spearman", **METADATA)
    min_score, max_score = 0, 5

    def load_data(self, **kwargs):
        columns = dict(zip(("sentence1", "sentence2", "score"), map(list, zip(*STS_PAIRS))))
        self.dataset = DatasetDict({"test": Dataset.from_dict(columns)})
        self.data_loaded = True


class TinyRetrieval(AbsTaskRetrieval):
    """Each document is its own query: only the query side gets the instruction."""

    metadata = TaskMetadata(type="Retrieval", name="TinyRetrieval", main_score="ndcg_at_10",
                            prompt={"query": "Given a sentence, retrieve the same sentence"}, **METADATA)

    def load_data(self, **kwargs):
        split = RetrievalSplitData(
            queries=Dataset.from_list([{"id": f"q{i}", "text": d} for i, d in enumerate(DOCUMENTS)]),
            corpus=Dataset.from_list([{"id": f"d{i}", "text": d, "title": ""} for i, d in enumerate(DOCUMENTS)]),
            relevant_docs={f"q{i}": {f"d{i}": 1} for i in range(len(DOCUMENTS))},
            top_ranked=None,
        )
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


@pytest.fixture(scope="module")
def encoder():
    return LLM2Vec.from_pretrained("tiny-random-llama")


def batches(texts):
    return [{"text": texts[:2]}, {"text": texts[2:]}]  # what mteb's DataLoader yields


def test_queries_get_the_task_instruction_and_documents_none(encoder):
    model = MTEBEncoder(encoder, instructions={"Retrieval": "Find the passage:"})
    texts = DOCUMENTS[:3]
    retrieval = TinyRetrieval.metadata
    query = model.encode(batches(texts), task_metadata=retrieval, hf_split="test", hf_subset="default",
                         prompt_type=PromptType.query)
    document = model.encode(batches(texts), task_metadata=retrieval, hf_split="test", hf_subset="default",
                            prompt_type=PromptType.document)
    np.testing.assert_allclose(query, encoder.encode([["Find the passage:", t] for t in texts]), atol=1e-6)
    np.testing.assert_allclose(document, encoder.encode(texts), atol=1e-6)
    # No override: the task's own prompt, written the LLM2Vec way; STS: mteb's STS prompt.
    plain = MTEBEncoder(encoder)
    assert plain.instruction_for(retrieval, PromptType.query) == "Given a sentence, retrieve the same sentence:"
    assert plain.instruction_for(TinySTS.metadata, None) == "Retrieve semantically similar text:"
    assert plain.instruction_for(TinySTS.metadata, PromptType.document) == ""
    assert llm2vec_instruction("Retrieve semantically similar text.") == "Retrieve semantically similar text:"


def test_mteb_scores_match_our_sts_and_results_are_written(encoder, tmp_path):
    results, skipped = run_mteb(encoder, [TinySTS(), TinyRetrieval()], output_folder=tmp_path, batch_size=4)
    assert skipped == {}
    # Two implementations, one number: mteb's cosine Spearman is ours on the same pairs and instruction.
    pairs = STSPairs("tiny", *map(list, zip(*[(a, b) for a, b, _ in STS_PAIRS])), np.array([s for *_, s in STS_PAIRS]))
    ours = evaluate_sts(encoder, pairs, instruction="Retrieve semantically similar text:")
    assert results["TinySTS"]["main_score"] == pytest.approx(ours["spearman"], abs=1e-3)
    # Every query finds its own text first although only queries carry the instruction.
    assert results["TinyRetrieval"]["main_score"] == pytest.approx(100.0)
    files = list(tmp_path.glob("results/llm2vec-lightning__tiny-random-llama/mean-bidirectional/TinySTS.json"))
    assert len(files) == 1
    written = json.loads(files[0].read_text())
    assert 100 * written["scores"]["test"][0]["main_score"] == pytest.approx(results["TinySTS"]["main_score"], abs=0.01)


def test_hub_tasks_are_skipped_offline_with_the_reason(encoder, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("llm2vec.evaluation.mteb.hub_unreachable_reason", lambda: "no network in this test")
    summary = run_evaluation(encoder, {"kind": "mteb", "tasks": ["STS12", "SciFact"]}, tmp_path)
    assert summary["results"] == {} and summary["main_score"] is None
    assert set(summary["skipped"]) == {"STS12", "SciFact"}
    assert "no network in this test" in summary["skipped"]["STS12"]
    assert (tmp_path / "mteb.json").is_file()
