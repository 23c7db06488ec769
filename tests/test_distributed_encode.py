"""Encoding sharded over 2 CPU processes (torchrun, gloo) equals encoding in one process."""

import subprocess
import sys

import numpy as np
import pytest

from llm2vec import LLM2Vec

TEXTS = [f"sentence number {i} " + "word " * (i % 7) for i in range(11)]  # 11: shards of 6 and 5


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("texts") / "texts.txt"
    path.write_text("\n".join(TEXTS) + "\n")
    return path


def test_two_processes_match_one(text_file, tmp_path):
    output = tmp_path / "emb.npy"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
               "-m", "llm2vec.distributed", "--model", "tiny-random-llama", "--input", str(text_file),
               "--output", str(output), "--batch-size", "4"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    sharded = np.load(output)
    single = LLM2Vec.from_pretrained("tiny-random-llama").encode(TEXTS, batch_size=4)
    assert sharded.shape == single.shape == (len(TEXTS), 64)
    np.testing.assert_allclose(sharded, single, atol=1e-5)


def test_without_process_group_is_plain_encode():
    from llm2vec.distributed import encode_sharded

    encoder = LLM2Vec.from_pretrained("tiny-random-llama")
    np.testing.assert_array_equal(encode_sharded(encoder, TEXTS[:3]), encoder.encode(TEXTS[:3]))


def test_missing_input_file_is_named(tmp_path):
    from llm2vec.distributed import main

    with pytest.raises(SystemExit, match="does not exist"):
        main(["--model", "tiny-random-llama", "--input", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "o.npy")])
