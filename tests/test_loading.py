"""Loading offline: shipped models (one GGUF, or chunks joined and sha256-checked), a GGUF path, a
local directory; a hub id while offline and a missing path fail with one line naming them. Nothing
is downloaded: HF_HUB_OFFLINE is set for the whole module."""

from __future__ import annotations

import hashlib
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from models import random_ids

from llm2vec import loading
from llm2vec.loading import (
    SHIPPED_MODELS,
    ShippedGGUF,
    load_decoder,
    load_tokenizer,
    materialize_tiny,
    resolve_weights,
)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _top_next_tokens(model, tokenizer, prompt: str, k: int = 3) -> list[str]:
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits[0, -1]
    return [tokenizer.decode(i) for i in logits.topk(k).indices]


@pytest.mark.slow
@pytest.mark.parametrize("name, architecture, layers", [("smollm2-135m", "LlamaForCausalLM", 30),
                                                        ("gemma3-270m", "Gemma3ForCausalLM", 18)])
def test_shipped_models_load_offline_with_their_real_weights(name, architecture, layers):
    model, tokenizer = load_decoder(name, with_lm_head=True)
    assert type(model).__name__ == architecture
    assert model.config.num_hidden_layers == layers
    # Dequantized correctly: the real model continues an obvious sequence.
    assert " Thursday" in _top_next_tokens(model, tokenizer, "Monday, Tuesday, Wednesday,")


@pytest.mark.slow
def test_joined_gemma_chunks_match_their_sha256():
    shipped = SHIPPED_MODELS["gemma3-270m"]
    joined = shipped.gguf_path()
    digest = hashlib.sha256()
    with joined.open("rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    assert digest.hexdigest() == shipped.sha256


def _fake_chunk_packages(root, chunks: list[bytes]) -> ShippedGGUF:
    """Packages fakechunks_<i>/data/model.gguf.part0<i>, as the Gemma chunk packages are laid out."""
    packages, files = [], []
    for index, chunk in enumerate(chunks):
        package = root / f"llm2vec_test_chunks_{index}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"model.gguf.part0{index}").write_bytes(chunk)
        packages.append(package.name)
        files.append(f"data/model.gguf.part0{index}")
    return ShippedGGUF(tuple(packages), tuple(files))


def test_chunks_are_joined_when_the_sha256_matches(tmp_path, monkeypatch):
    chunks = [b"first chunk;", b"second chunk;", b"third"]
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("LLM2VEC_CACHE", str(tmp_path / "cache"))
    fake = _fake_chunk_packages(tmp_path / "site", chunks)
    good = ShippedGGUF(fake.packages, fake.files, sha256=hashlib.sha256(b"".join(chunks)).hexdigest())
    joined = good.gguf_path()
    assert joined.name == "model.gguf"
    assert joined.read_bytes() == b"".join(chunks)


def test_corrupted_join_is_detected_and_not_cached(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("LLM2VEC_CACHE", str(tmp_path / "cache"))
    fake = _fake_chunk_packages(tmp_path / "site", [b"first chunk;", b"a chunk that got corrupted"])
    bad = ShippedGGUF(fake.packages, fake.files, sha256=hashlib.sha256(b"what the chunks should hold").hexdigest())
    with pytest.raises(ValueError, match=rf"joined model.gguf has sha256 [0-9a-f]{{64}}, expected {bad.sha256}"):
        bad.gguf_path()
    # Neither the joined file nor a half-written temp file stays behind to be trusted next time.
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []
    with pytest.raises(ValueError, match="has sha256"):
        bad.gguf_path()


def test_a_missing_chunk_file_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("LLM2VEC_CACHE", str(tmp_path / "cache"))
    fake = _fake_chunk_packages(tmp_path / "site", [b"first chunk;", b"second chunk"])
    missing = tmp_path / "site" / fake.packages[1] / fake.files[1]
    missing.unlink()
    with pytest.raises(FileNotFoundError, match="model.gguf.part01"):
        fake.gguf_path()
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


def test_a_shipped_model_whose_package_is_missing_names_the_package():
    missing = ShippedGGUF(("llm2vec_no_such_package",), ("model.gguf",))
    with pytest.raises(FileNotFoundError, match=r"package 'llm2vec_no_such_package' is not installed.*make setup"):
        missing.gguf_path()


@pytest.mark.slow
def test_a_gguf_file_path_loads_like_the_shipped_name():
    gguf = SHIPPED_MODELS["smollm2-135m"].gguf_path()
    assert gguf.suffix == ".gguf" and gguf.is_file()
    assert resolve_weights(str(gguf)) == resolve_weights("smollm2-135m")
    model, _ = load_decoder(str(gguf))
    assert type(model).__name__ == "LlamaModel"


def test_a_local_directory_loads_the_same_weights_as_its_name():
    directory = materialize_tiny("qwen2")
    by_name, _ = load_decoder("tiny-random-qwen2")
    by_path, tokenizer = load_decoder(str(directory))
    assert type(by_path).__name__ == "Qwen2Model"
    ids = random_ids([6])[0].unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(by_path(ids).last_hidden_state, by_name(ids).last_hidden_state, rtol=0, atol=0)
    assert tokenizer.pad_token is not None


def test_with_lm_head_gives_the_causal_lm():
    lm, _ = load_decoder("tiny-random-llama", with_lm_head=True)
    bare, _ = load_decoder("tiny-random-llama")
    assert type(lm).__name__ == "LlamaForCausalLM" and type(bare).__name__ == "LlamaModel"


def test_hf_kwargs_reach_from_pretrained():
    model, _ = load_decoder("tiny-random-llama", dtype=torch.bfloat16, attn_implementation="eager")
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "eager"


def test_a_tokenizer_without_pad_token_pads_with_eos(tmp_path):
    _, tokenizer = load_decoder("tiny-random-llama")
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    reloaded = load_tokenizer(str(tmp_path))
    assert reloaded.pad_token == reloaded.eos_token is not None


def test_hub_id_offline_fails_with_one_clear_line():
    with pytest.raises(OSError) as raised:
        load_decoder("llm2vec-tests/no-such-model")
    message = str(raised.value)
    assert "\n" not in message
    assert "cannot load model 'llm2vec-tests/no-such-model'" in message
    assert "smollm2-135m" in message and "HF_HUB_OFFLINE" in message


@pytest.mark.parametrize("path", ["./no/such/model", "/tmp/llm2vec-no-such-dir/model", "~/no-such-model-dir", "missing.gguf"])
def test_a_missing_path_names_it(path):
    with pytest.raises(FileNotFoundError, match=f"'{path}' does not exist"):
        load_decoder(path)


def test_an_unknown_tiny_architecture_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown tiny architecture 'gpt9': choose llama, mistral, .*phi3"):
        load_decoder("tiny-random-gpt9")


@pytest.fixture
def tiny_target(tmp_path, monkeypatch):
    """Where materialize_tiny builds tiny-random-llama in an empty cache (SmolLM2's tokenizer from the
    usual one: dequantizing it again would take 15 s)."""
    smollm2 = resolve_weights("smollm2-135m")
    monkeypatch.setattr(loading, "resolve_weights", lambda name: smollm2)
    monkeypatch.setenv("LLM2VEC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models" / "tiny-random-llama"


def while_staging(monkeypatch, target, other_run):
    """Run `other_run(target)` as the staging folder beside `target` is made."""
    mkdtemp = loading.tempfile.mkdtemp

    def staging(**kwargs):
        if Path(kwargs["dir"]) == target.parent:
            other_run(target)
        return mkdtemp(**kwargs)

    monkeypatch.setattr(loading.tempfile, "mkdtemp", staging)


def test_a_model_another_run_published_first_is_kept(tiny_target, monkeypatch):
    """Runs started side by side (a sweep's JOBS=6) each build the cached model; the later rename
    lands on the folder the first one published, which must be used, not an error."""
    def publish(target):
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")

    while_staging(monkeypatch, tiny_target, publish)
    assert materialize_tiny("llama") == tiny_target
    assert (tiny_target / "config.json").read_text() == "{}"
    assert [p.name for p in tiny_target.parent.iterdir()] == ["tiny-random-llama"]  # no staging left


def test_a_failed_publish_without_a_model_in_place_still_raises(tiny_target, monkeypatch):
    def leave_a_stray_folder(target):
        target.mkdir(parents=True)
        (target / "stray").write_text("not a model")

    while_staging(monkeypatch, tiny_target, leave_a_stray_folder)
    with pytest.raises(OSError):
        materialize_tiny("llama")
    assert [p.name for p in tiny_target.parent.iterdir()] == ["tiny-random-llama"]
