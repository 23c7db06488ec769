"""Encoding sharded over 2 CPU processes (torchrun, gloo) equals encoding in one process."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llm2vec import LLM2Vec

ROOT = Path(__file__).resolve().parents[1]
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


@pytest.mark.slow
@pytest.mark.parametrize("fault, failed_rank, error", [
    ("raise", 1, "ValueError: cannot encode 'sentence number 1 word ': a bad input in this shard"),
    ("kill", 1, "Signal 9 (SIGKILL) received by PID"),
    ("hang", 0, "Timed out"),  # rank 0 gives up waiting in the all-gather after --timeout-minutes
])
def test_a_failing_process_fails_the_job_cleanly(text_file, tmp_path, fault, failed_rank, error):
    """One process fails in its encode: torchrun stops the other and exits non-zero (no hang: a hung
    process is given up on after --timeout-minutes, 30 s here), its summary names the failed rank and
    why, and no output is written."""
    output = tmp_path / "emb.npy"
    env = {**os.environ, "FAULT": fault, "FAULT_RANK": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29518",
               str(ROOT / "tests/fault_encode.py"), "--model", "tiny-random-llama", "--input", str(text_file),
               "--output", str(output), "--timeout-minutes", "0.5"]
    job = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        log, _ = job.communicate(timeout=240)  # returns once every process has closed the pipe
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        pytest.fail(f"torchrun was still running after 240 s:\n{job.communicate()[0][-3000:]}")
    assert job.returncode != 0
    # torchrun's summary: one block per failed rank. (Its "root cause" is the earliest failure, which for
    # a killed process can be the other one's broken connection, seen a moment before the kill.)
    blocks = log[log.index("Failures:"):].split("host      : ")
    assert any(block.startswith(f"localhost\n  rank      : {failed_rank} ") and error in block for block in blocks), log[-4000:]
    assert not output.exists()
