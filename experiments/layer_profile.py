"""STS-B Spearman x100 of each layer's mean-pooled hidden states: which layer of a decoder embeds best
(Skean et al., 2025, "Layer by Layer", arXiv 2502.02013, find intermediate layers often do).

    python experiments/layer_profile.py gemma3-270m                       # the bidirectional base model
    python experiments/layer_profile.py <run dir or saved encoder> --splits dev test
    python experiments/layer_profile.py <saved encoder> --instruction "Retrieve semantically similar text:"

Layer 0 is the embeddings; layer L the output of decoder layer L, put through the decoder's final norm
as the encoder pools it with `pooling_layers=[L]` (the last layer's output has been through it
already); `--raw` leaves the intermediate layers' states unnormalised, as this script did before
2026-12-06 (raw, a few huge residual dimensions dominate them: on `make run`'s Gemma-3 encoder, seed 1,
layer 13 scores STS-B dev 80.70 raw against 81.94 normalised, and the last layer, 81.37, looks best
raw). `--instruction` puts an instruction before every sentence, as `eval.instruction` does (attended
to, not pooled). Tune on dev, report on test.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from scipy.stats import spearmanr
from torch.nn import functional as F

from llm2vec import LLM2Vec
from llm2vec.evaluation.sts import load_sts
from llm2vec.pooling import average_layers, final_norm, mean_pool

DATA = Path(os.environ.get("LLM2VEC_DATA", Path(__file__).resolve().parents[1] / "../shared/data"))


@torch.no_grad()
def layer_embeddings(encoder: LLM2Vec, texts: list, batch_size: int = 64, raw: bool = False) -> torch.Tensor:
    """(layers + 1, texts, hidden): each layer's mean over the text tokens (texts or [instruction, text]
    pairs), through the final norm unless `raw`."""
    norm = (lambda h: h) if raw else final_norm(encoder.model)
    per_batch = []
    for start in range(0, len(texts), batch_size):
        features = encoder.tokenize(texts[start:start + batch_size])
        output = encoder.model(
            input_ids=features["input_ids"], attention_mask=features["attention_mask"],
            position_ids=(features["attention_mask"].cumsum(dim=1) - 1).clamp(min=0),
            output_hidden_states=True, use_cache=False,
        )
        states = [average_layers(output.hidden_states, norm, [layer]) for layer in range(len(output.hidden_states))]
        per_batch.append(torch.stack([mean_pool(h.float(), features["embed_mask"]) for h in states]))
    return torch.cat(per_batch, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("encoder", help="a model name, run dir or saved encoder (LLM2Vec.from_pretrained)")
    parser.add_argument("--splits", nargs="+", default=["dev"], choices=["dev", "test"])
    parser.add_argument("--raw", action="store_true", help="intermediate layers without the final norm")
    parser.add_argument("--instruction", help="an instruction before every sentence (eval.instruction)")
    args = parser.parse_args()
    encoder = LLM2Vec.from_pretrained(args.encoder).eval()
    for split in args.splits:
        pairs = load_sts(DATA / "sts" / f"STSB-{split}.tsv", split=split)
        texts = sorted(set(pairs.sentences1) | set(pairs.sentences2), key=len)  # short batches first
        index = {text: i for i, text in enumerate(texts)}
        inputs = [[args.instruction, text] for text in texts] if args.instruction else texts
        embeddings = F.normalize(layer_embeddings(encoder, inputs, raw=args.raw), dim=-1)
        first = embeddings[:, [index[s] for s in pairs.sentences1]]
        second = embeddings[:, [index[s] for s in pairs.sentences2]]
        for layer, cosine in enumerate((first * second).sum(dim=-1)):
            print(f"STSB-{split}\tlayer {layer}\t{100 * spearmanr(cosine.numpy(), pairs.scores).correlation:.2f}")


if __name__ == "__main__":
    main()
