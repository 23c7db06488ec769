"""`python -m llm2vec.distributed ...` for the fault tests: the process of rank $FAULT_RANK fails in
its encode: it raises (FAULT=raise: bad input in its shard), is killed (FAULT=kill) or hangs (FAULT=hang)."""

import os
import signal
import sys
import time

from llm2vec import LLM2Vec
from llm2vec.distributed import main


def failing_encode(self, sentences, **kwargs):
    if os.environ["FAULT"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ["FAULT"] == "hang":
        time.sleep(600)
    raise ValueError(f"cannot encode {sentences[0]!r}: a bad input in this shard")


if __name__ == "__main__":
    if os.environ["RANK"] == os.environ["FAULT_RANK"]:
        LLM2Vec.encode = failing_encode
    main(sys.argv[1:])
