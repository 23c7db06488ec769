"""The paper-protocol data offline: data=wiki1m (SimCSE) reads the local Wiki1M prefix, or the hub
when that file is missing; MNTP's WikiText blocks and Wiki1M hold no STS-B sentence."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import run  # noqa: F401  (registers the project_root resolver)
from llm2vec import data as data_module
from llm2vec.data import read_lines, read_sentences

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def compose_data(*overrides: str):
    with initialize_config_dir(CONF, version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.fixture(scope="module")
def stsb_sentences() -> set[str]:
    data_dir = Path(compose_data().paths.data_dir)
    return {s for split in ("train", "dev", "test") for s in read_sentences(data_dir / "sts" / f"STSB-{split}.tsv")}


def test_wiki1m_reads_the_local_file_and_holds_no_stsb_sentence(stsb_sentences, caplog):
    cfg = compose_data("stage=simcse", "data=wiki1m", "data.max_sentences=500")
    assert Path(cfg.data.files[0]).name == "wiki1m_first_11914.txt" and Path(cfg.data.files[0]).is_file()
    data = instantiate(cfg.data)
    with caplog.at_level(logging.INFO, logger="llm2vec.data"):
        data.setup()
    assert len(data.sentences) == 500 and len(set(data.sentences)) == 500
    assert "wiki1m_first_11914.txt" in caplog.text and "not the hub" in caplog.text
    # The whole file (11,914 lines, 11,548 distinct): not one sentence of STS-B train, dev or test.
    everything = set(read_lines(cfg.data.files[0]))
    assert len(everything) > 11_000 and everything.isdisjoint(stsb_sentences)
    folded = {" ".join(s.lower().split()) for s in stsb_sentences}
    assert folded.isdisjoint({" ".join(s.lower().split()) for s in everything})


def test_wiki1m_reads_the_hub_when_the_local_file_is_missing(tmp_path, monkeypatch, caplog):
    asked = {}

    def fake_hub(**hub):  # no download in tests: record what would be read
        asked.update(hub)
        return ["A hub sentence.", "Another hub sentence.", "A hub sentence."]

    monkeypatch.setattr(data_module, "read_hub_texts", fake_hub)
    cfg = compose_data("stage=simcse", "data=wiki1m", f"data.files=[{tmp_path / 'missing.txt'}]")
    data = instantiate(cfg.data)
    with caplog.at_level(logging.INFO, logger="llm2vec.data"):
        data.setup()
    assert asked["path"] == "princeton-nlp/datasets-for-simcse" and asked["data_files"] == "wiki1m_for_simcse.txt"
    assert data.sentences == ["A hub sentence.", "Another hub sentence."]
    assert "hub dataset princeton-nlp/datasets-for-simcse" in caplog.text and "missing.txt" in caplog.text


def test_mntp_data_is_wikitext_without_stsb_sentences(stsb_sentences):
    cfg = compose_data("stage=mntp")
    assert cfg.data._target_ == "llm2vec.data.TextBlocks" and cfg.data.hub is None
    assert [Path(f).name for f in cfg.data.files] == ["wikitext2_paragraphs.txt"]
    text = "\n".join(read_lines(cfg.data.files[0]))
    assert not [s for s in stsb_sentences if len(s) > 30 and s in text]
