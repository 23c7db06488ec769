"""Word-level probes on Universal Dependencies (eval=probes_ud): CoNLL-U parsing (multiword tokens and
empty nodes skipped), one clear file:line error for each kind of malformed file, the eval config, and
on real EWT sentences with SmolLM2 a probe far above the majority-tag baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import run  # noqa: F401  (registers the project_root resolver)
from llm2vec import LLM2Vec
from llm2vec.evaluation import run_evaluation
from llm2vec.evaluation.ud import read_conllu

CONF = str(Path(__file__).resolve().parents[1] / "conf")

# Two sentences: a multiword token ("don't" = do + n't) and an empty node (8.1), as EWT has them.
FIXTURE = """\
# sent_id = one
# text = I don't like rain.
1\tI\tI\tPRON\tPRP\t_\t4\tnsubj\t4:nsubj\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t4:aux\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t4:advmod\t_
4\tlike\tlike\tVERB\tVB\t_\t0\troot\t0:root\t_
5\train\train\tNOUN\tNN\t_\t4\tobj\t4:obj\tSpaceAfter=No
6\t.\t.\tPUNCT\t.\t_\t4\tpunct\t4:punct\t_

# sent_id = two
1\tSue\tSue\tPROPN\tNNP\t_\t2\tnsubj\t2:nsubj\t_
2\tlikes\tlike\tVERB\tVBZ\t_\t0\troot\t0:root\t_
3\ttea\ttea\tNOUN\tNN\t_\t2\tobj\t2:obj\t_
4\tand\tand\tCCONJ\tCC\t_\t6\tcc\t6:cc\t_
5\tTom\tTom\tPROPN\tNNP\t_\t3\tconj\t3:conj\t_
5.1\tlikes\tlike\tVERB\tVBZ\t_\t_\t_\t2:conj\t_
6\tcoffee\tcoffee\tNOUN\tNN\t_\t5\tnmod:poss\t5:nmod:poss\t_
"""


def write(tmp_path: Path, text: str, name: str = "x.conllu") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_words_upos_and_deprel_skip_multiword_tokens_and_empty_nodes(tmp_path):
    path = write(tmp_path, "\ufeff" + FIXTURE)  # a byte-order mark; no blank line after the last sentence
    tagged = read_conllu(path, ["upos", "deprel"])
    assert tagged["upos"].words == [["I", "do", "n't", "like", "rain", "."],
                                    ["Sue", "likes", "tea", "and", "Tom", "coffee"]]
    assert tagged["upos"].tags[0] == ["PRON", "AUX", "PART", "VERB", "NOUN", "PUNCT"]
    assert tagged["deprel"].tags[1] == ["nsubj", "root", "obj", "cc", "conj", "nmod"]  # nmod:poss -> nmod
    assert read_conllu(path, ["deprel"], deprel_subtypes=True)["deprel"].tags[1][-1] == "nmod:poss"
    first = read_conllu(path, ["upos"], max_sentences=1)["upos"]
    assert len(first.words) == 1 and first.words[0][0] == "I"


@pytest.mark.parametrize("lines, line_number, message", [
    # a word line cut to 4 columns
    (FIXTURE.replace("5\train\train\tNOUN\tNN\t_\t4\tobj\t4:obj\tSpaceAfter=No", "5\train\train\tNOUN"), 8,
     "4 tab-separated columns where CoNLL-U has 10"),
    # spaces instead of tabs
    (FIXTURE.replace("1\tSue\tSue\tPROPN\tNNP\t_\t2\tnsubj\t2:nsubj\t_", "1 Sue Sue PROPN NNP _ 2 nsubj 2:nsubj _"), 12,
     "1 tab-separated columns"),
    # an ID that is no number
    (FIXTURE.replace("4\tand\tand", "four\tand\tand"), 15, "'four' is not a valid ID"),
    # a head that is no number
    (FIXTURE.replace("3\ttea\ttea\tNOUN\tNN\t_\t2", "3\ttea\ttea\tNOUN\tNN\t_\tx"), 14, "head"),
    # two sentences without the blank line between them: word IDs restart
    (FIXTURE.replace("\n\n# sent_id = two\n", "\n# sent_id = two\n"), 11, "word ID 1 where 7 was expected"),
])
def test_malformed_lines_name_file_and_line(tmp_path, lines, line_number, message):
    path = write(tmp_path, lines)
    with pytest.raises(ValueError, match=message) as error:
        read_conllu(path, ["upos"])
    assert str(error.value).startswith(f"{path}:{line_number}: ")


def test_missing_empty_and_wrong_column(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.conllu.*does not exist"):
        read_conllu(tmp_path / "missing.conllu", ["upos"])
    for text in ("", "\n\n", "# only a comment\n"):
        with pytest.raises(ValueError, match="no sentences"):
            read_conllu(write(tmp_path, text, "empty.conllu"), ["upos"])
    binary = tmp_path / "binary.conllu"
    binary.write_bytes(b"1\tcaf\xe9\n")
    with pytest.raises(ValueError, match="binary.conllu: not UTF-8 text"):
        read_conllu(binary, ["upos"])
    with pytest.raises(ValueError, match="unknown CoNLL-U column.*'pos'.*choose from form, lemma, upos"):
        read_conllu(write(tmp_path, FIXTURE), ["pos"])


def test_eval_config_composes_and_runs_on_the_fixture(tmp_path):
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("config", overrides=["stage=eval", "eval=probes_ud", "model=tiny_llama"])
    config = OmegaConf.to_container(cfg.eval, resolve=True)
    assert config["kind"] == "probes_ud" and [t["name"] for t in config["tasks"]] == ["upos", "deprel"]
    assert Path(config["train_path"]).name == "en_ewt-ud-dev.conllu" and Path(config["train_path"]).is_file()
    assert Path(config["eval_path"]).name == "en_ewt-ud-test.conllu" and Path(config["eval_path"]).is_file()
    # The run on the tiny model and the fixture (train = test): the metrics and files of any eval.
    fixture = str(write(tmp_path, FIXTURE))
    summary = run_evaluation(LLM2Vec.from_pretrained("tiny-random-llama"),
                             {**config, "train_path": fixture, "eval_path": fixture, "epochs": 50}, tmp_path / "run")
    upos = summary["results"]["upos"]
    assert (upos["eval_words"], upos["labels"], upos["unseen_tag_words"]) == (12, 8, 0)
    assert upos["majority_baseline"] == pytest.approx(100 * 3 / 12)  # NOUN: rain, tea, coffee
    assert upos["accuracy"] > 90  # 12 words, memorised
    assert json.loads((tmp_path / "run" / "probes_ud.json").read_text()) == summary


@pytest.mark.slow
def test_probe_on_real_ud_sentences_beats_the_majority_tag(tmp_path):
    """SmolLM2 (causal, untrained): probes fit on 200 EWT dev sentences (4k words), scored on 100 test sentences (2k words)."""
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("config", overrides=["stage=eval", "eval=probes_ud", "eval.max_train_sentences=200",
                                           "eval.max_eval_sentences=100"])
    encoder = LLM2Vec.from_pretrained("smollm2-135m", enable_bidirectional=False, dtype="bfloat16")
    summary = run_evaluation(encoder, OmegaConf.to_container(cfg.eval, resolve=True), tmp_path)
    upos, deprel = summary["results"]["upos"], summary["results"]["deprel"]
    assert upos["eval_words"] > 1000 and upos["labels"] == 17
    assert upos["accuracy"] > upos["majority_baseline"] + 40, upos
    assert deprel["accuracy"] > deprel["majority_baseline"] + 25, deprel
