"""Model soups (Wortsman et al., 2022): one encoder whose weights are the mean of the weights of
several encoders trained from the same base model (the seeds of one recipe, say). It encodes at the
cost of one encoder, unlike an ensemble.

    python -m llm2vec.soup runs/simcse/seed1 runs/simcse/seed2 runs/simcse/seed3 --out soup

A saved encoder is a base model plus a stack of LoRA adapters (`merged_adapters/NN`, then the one
trained last). At each level of the stack the soup's adapter is peft's `cat` combination of the
encoders' adapters there, each weighted 1/n: its weight change is exactly the mean of theirs (the
ranks add up), so the soup's weights are the mean of the encoders' weights. A level where every
encoder holds the same adapter (the MNTP run that SimCSE runs on different data start from) is that
adapter, kept as it is. The soup is a saved encoder like any other (`LLM2Vec.from_pretrained(out)`,
`run.py stage=eval stage.init_from=out`, or `stage=soup` in a pipeline). Pooling weights (latent
attention) are averaged too.
"""

from __future__ import annotations

import argparse
import filecmp
import tempfile
from pathlib import Path
from typing import Sequence

import torch
from peft import PeftModel

from llm2vec.encoder import POOLING_WEIGHTS, LLM2Vec, is_saved_encoder, saved_adapter_stack
from llm2vec.encoder_files import EncoderFilesError, read_config
from llm2vec.loading import load_decoder
from llm2vec.pooling import check_pooling_layers

# What the encoders of one soup must share: only their weights are averaged.
SHARED_SETTINGS = ("base_model_name_or_path", "pooling_mode", "pooling_layers", "max_length",
                   "enable_bidirectional", "echo", "template")
SOUP_ADAPTER = "soup"


def soup(encoder_dirs: Sequence[str | Path], out: str | Path, **hf_kwargs) -> Path:
    """Write the soup of the saved encoders `encoder_dirs` to `out` and return `out`."""
    settings, stacks = read_encoders([Path(d) for d in encoder_dirs])
    base = settings.pop("base_model_name_or_path")
    model, _ = load_decoder(base, **hf_kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        levels = []
        for level in range(len(stacks[0])):
            adapters = [stack[level] for stack in stacks]
            if all(same_adapter(adapters[0], other) for other in adapters[1:]):
                levels.append(adapters[0])
                continue
            model, adapter = mean_adapter(model, adapters, Path(tmp) / f"{level:02d}")
            levels.append(adapter)
        del model  # from_pretrained loads the base again and stacks the levels as for any saved encoder
        encoder = LLM2Vec.from_pretrained(base, peft_model_name_or_path=levels, **settings, **hf_kwargs)
        if any(True for _ in encoder.pooling.parameters()):
            encoder.pooling.load_state_dict(mean_pooling_weights(encoder_dirs))
        return encoder.save(out)  # copies the merged levels out of tmp


def read_encoders(encoder_dirs: list[Path]) -> tuple[dict, list[list[str]]]:
    """The settings the encoders share, and each one's adapter stack (merged ones first)."""
    if len(encoder_dirs) < 2:
        raise ValueError(f"a soup needs at least 2 encoders, got {len(encoder_dirs)}")
    configs = []
    for encoder_dir in encoder_dirs:
        if not is_saved_encoder(encoder_dir):
            raise EncoderFilesError(f"{encoder_dir} is not a saved encoder (no llm2vec_config.json): pass the "
                                    "run dirs of finished training runs or folders written by LLM2Vec.save")
        config = read_config(encoder_dir)
        configs.append(config | {"pooling_layers": pooling_layers(config)})
        if configs[-1].get("decoder"):
            raise ValueError(f"{encoder_dir} is fully fine-tuned (its whole decoder is saved): a soup averages "
                             "LoRA adapters, not decoders")
    for encoder_dir, config in zip(encoder_dirs[1:], configs[1:]):
        differences = [f"{key} {config.get(key)!r} vs {configs[0].get(key)!r}"
                       for key in SHARED_SETTINGS if config.get(key) != configs[0].get(key)]
        if differences:
            raise ValueError(f"{encoder_dir} and {encoder_dirs[0]} cannot share a soup: {', '.join(differences)}")
    stacks = [saved_adapter_stack(d, c) for d, c in zip(encoder_dirs, configs)]
    depths = [len(stack) for stack in stacks]
    if min(depths) == 0 or len(set(depths)) > 1:
        raise ValueError(f"the encoders' adapter stacks must have one depth of at least 1 (got {depths}): "
                         "a soup averages the adapters level by level")
    return {key: configs[0].get(key) for key in SHARED_SETTINGS}, stacks


def pooling_layers(config: dict) -> list[int] | None:
    """The saved encoder's pooled layers as numbers: an encoder saved before `pooling_layers` was
    (None) pools the last layer, as one naming it does."""
    depth = (config.get("base_model") or {}).get("num_hidden_layers")
    return config.get("pooling_layers") if depth is None else check_pooling_layers(config.get("pooling_layers"), depth)


def same_adapter(first: str, second: str) -> bool:
    """Whether two adapter folders hold the same weights and config (byte for byte)."""
    return all(filecmp.cmp(Path(first) / name, Path(second) / name, shallow=False)
               for name in ("adapter_config.json", "adapter_model.safetensors"))


def mean_adapter(model, adapters: list[str], out: Path) -> tuple[torch.nn.Module, Path]:
    """Save the 1/n-weighted `cat` combination of `adapters` under `out`; return the model without
    adapters again, and the combined adapter's folder."""
    names = [f"encoder{index}" for index in range(len(adapters))]
    peft_model = PeftModel.from_pretrained(model, adapters[0], adapter_name=names[0])
    for name, adapter in zip(names[1:], adapters[1:]):
        peft_model.load_adapter(adapter, adapter_name=name)
    peft_model.add_weighted_adapter(names, [1 / len(names)] * len(names), SOUP_ADAPTER, combination_type="cat")
    peft_model.save_pretrained(str(out), selected_adapters=[SOUP_ADAPTER])  # into out/<adapter name>
    return peft_model.unload(), out / SOUP_ADAPTER


def mean_pooling_weights(encoder_dirs: Sequence[str | Path]) -> dict[str, torch.Tensor]:
    files = [Path(d) / POOLING_WEIGHTS for d in encoder_dirs]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise EncoderFilesError(f"the pooling has weights but {', '.join(missing)} do not exist")
    states = [torch.load(f, map_location="cpu") for f in files]
    return {key: torch.stack([state[key].float() for state in states]).mean(0) for key in states[0]}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Average the weights of saved encoders (a model soup).")
    parser.add_argument("encoders", nargs="+", help="saved encoders (run dirs or LLM2Vec.save folders)")
    parser.add_argument("--out", required=True, help="where to save the soup encoder")
    args = parser.parse_args(argv)
    print(soup(args.encoders, args.out))


if __name__ == "__main__":
    main()
