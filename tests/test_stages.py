"""The training stages as library objects (no Hydra): data modules, MNTP, SimCSE, supervised."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from lightning import Callback, Trainer
from peft import PeftModel
from torch.utils.data import DataLoader
from transformers import AutoModel

from llm2vec import LLM2Vec, enable_bidirectional
from llm2vec.data import BatchStream, Pairs, Sentences, TextBlocks
from llm2vec.loading import load_tokenizer, resolve_weights
from llm2vec.losses import ContrastiveLoss, dimension_contrastive_loss, off_dropout_loss
from llm2vec.replaced_tokens import ReplacedTokenDetection
from llm2vec.stages import MNTP, SimCSE, Supervised
from llm2vec.stages.base import compile_decoder_layers

FIXTURES = Path(__file__).parent / "fixtures"

LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
ADAMW = functools.partial(torch.optim.AdamW, lr=1e-3)
SENTENCES = ["A man plays a guitar.", "A cat sleeps on the sofa.", "The river floods the village.", "Kids play."]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_weights("tiny-random-llama"))


def manual_step(module, batch) -> torch.Tensor:
    """One optimisation step outside a Trainer (the module's own loss, backward, AdamW)."""
    module.log_step = lambda *args, **kwargs: None
    module.train()
    optimizer = module.configure_optimizers()
    loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    return loss


# ----------------------------------------------------------------------------- data


def test_text_blocks_are_the_texts_joined_with_eos(tokenizer):
    data = TextBlocks(tokenizer, [str(FIXTURES / "wiki_tiny.txt")], block_size=32, batch_size=2)
    data.setup()
    texts = (FIXTURES / "wiki_tiny.txt").read_text().splitlines()
    ids = [t for text in texts for t in tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]]
    assert data.blocks.shape == (len(ids) // 32, 32)
    assert data.blocks.flatten().tolist() == ids[: data.blocks.numel()]
    batch = data.collate([0, 2])
    assert torch.equal(batch["input_ids"], data.blocks[[0, 2]]) and batch["attention_mask"].all()


def test_the_stream_resumes_after_the_batches_already_seen():
    def batches(epoch):  # 3 batches per pass, a different order each pass
        return [[epoch, i] for i in range(3)]

    full = BatchStream(batches)
    first_eight = [next(it) for it in [iter(full)] for _ in range(8)]
    resumed = iter(BatchStream(batches, start=5))
    assert [next(resumed) for _ in range(3)] == first_eight[5:8]  # across the pass boundary too


def test_each_process_reads_its_slice_of_the_global_batch():
    def batches(epoch):
        return [list(range(8)), list(range(8, 16))]

    ranks = [iter(BatchStream(batches, rank=rank, world_size=2)) for rank in range(2)]
    assert [next(ranks[0]), next(ranks[1])] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [next(ranks[0]), next(ranks[1])] == [[8, 9, 10, 11], [12, 13, 14, 15]]


def test_sentences_read_both_tsv_columns_and_grouping_by_length_pads_less(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("sentence1\tsentence2\tscore\nA b.\tA b c d e f g h.\t1\nC.\tC d e f g h i j k l.\t2\n")
    data = Sentences([str(tsv)], batch_size=2)
    data.setup()
    assert data.sentences == ["A b.", "A b c d e f g h.", "C.", "C d e f g h i j k l."]
    grouped = Sentences([str(tsv)], batch_size=2, group_by_length=True)
    grouped.setup()

    def padding(batches):
        return sum(max(map(len, b)) * len(b) - sum(map(len, b)) for b in batches)

    assert padding(grouped.global_batches(0, 2)) < padding(data.global_batches(0, 2))
    assert sorted(s for b in grouped.global_batches(0, 2) for s in b) == sorted(data.sentences)


def test_sentences_drop_those_outside_min_and_max_words_and_refuse_when_none_is_left(tmp_path):
    text = tmp_path / "wiki.txt"
    text.write_text("Notes\nJohn Smith\nThe river rises in the hills.\nIt was won by Dundalk.\n")
    data = Sentences([str(text)], batch_size=2, min_words=3)
    data.setup()
    assert data.sentences == ["The river rises in the hills.", "It was won by Dundalk."]
    too_strict = Sentences([str(text)], batch_size=2, min_words=7)
    with pytest.raises(ValueError, match="no sentence of 7 or more words"):
        too_strict.setup()
    short = Sentences([str(text)], batch_size=2, min_words=2, max_words=5)
    short.setup()
    assert short.sentences == ["John Smith", "It was won by Dundalk."]
    with pytest.raises(ValueError, match="no sentence of 7 to 9 words"):
        Sentences([str(text)], batch_size=2, min_words=7, max_words=9).setup()
    with pytest.raises(ValueError, match="max_words"):
        Sentences([str(text)], batch_size=2, min_words=3, max_words=2)


def test_pairs_batches_come_from_one_dataset_with_instructions_on_queries():
    data = Pairs([str(FIXTURES / "pairs")], batch_size=4, instructions={"qa": "Answer:"})
    data.setup()
    assert set(data.datasets) == {"nli", "qa"}
    for batch in data.global_batches(epoch=0, global_batch_size=4):
        assert len({record["dataset"] for record in batch}) == 1
    batch = data.collate(data.datasets["qa"][:2])
    assert batch["query"][0] == ["Answer:", "What do lobsters eat?"]
    assert batch["positive"][0].startswith("Lobsters eat") and len(batch["negative"]) == 2


# ----------------------------------------------------------------------------- MNTP


def test_mntp_rejects_a_bad_recipe_before_loading_anything():
    with pytest.raises(ValueError, match="unknown mask_strategy 'half': choose bert, all_mask"):
        MNTP("no-such-model", LORA, ADAMW, mask_strategy="half")


def test_mntp_new_mask_token_trains_and_the_saved_adapter_loads_with_plain_peft(tokenizer, tmp_path):
    module = MNTP("tiny-random-llama", LORA, ADAMW, mask_token_type="mask", mask_ratio=0.5, dtype="float32")
    rows = len(tokenizer)
    assert module.masking.mask_token_id == rows
    assert module.encoder.model.get_input_embeddings().num_embeddings == rows + 1
    ids = torch.randint(3, 1000, (2, 16))
    loss = manual_step(module, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert torch.isfinite(loss)
    module.save(tmp_path)
    assert module.encoder.model.get_input_embeddings().num_embeddings == rows  # the <mask> row is gone

    # Plain peft on the bare backbone gives the trained model: the run dir is an ordinary adapter.
    features = {k: v for k, v in module.encoder.tokenize(SENTENCES).items() if k != "embed_mask"}
    module.eval()
    with torch.no_grad():
        trained = module.encoder.model(**features).last_hidden_state
        base = AutoModel.from_pretrained(resolve_weights("tiny-random-llama"))
        plain = enable_bidirectional(PeftModel.from_pretrained(base, tmp_path))
        loaded = plain(**features).last_hidden_state
        with plain.disable_adapter():
            untrained = plain(**features).last_hidden_state
    assert torch.allclose(loaded, trained, atol=1e-5)
    assert not torch.allclose(loaded, untrained, atol=1e-5)


# ----------------------------------------------------------------------------- SimCSE


def simcse(pooling_mode: str = "mean", attention_dropout: float = 0.3, **kwargs) -> SimCSE:
    encoder = LLM2Vec.from_pretrained("tiny-random-llama", pooling_mode=pooling_mode)
    return SimCSE(encoder, LORA, ADAMW, attention_dropout=attention_dropout, **kwargs)


def assert_views_differ_in_training_only(module: SimCSE) -> None:
    module.train()
    first, second = module.embed(SENTENCES + SENTENCES).chunk(2)
    assert not torch.allclose(first, second)
    module.eval()
    with torch.no_grad():
        first, second = module.embed(SENTENCES + SENTENCES).chunk(2)
    assert torch.allclose(first, second)


def test_simcse_dropout_makes_the_two_views_differ_in_training_only():
    module = simcse()
    attention = [m for m in module.encoder.model.modules() if hasattr(m, "attention_dropout")]
    assert attention and all(m.attention_dropout == 0.3 for m in attention)
    assert_views_differ_in_training_only(module)


def test_simcse_hidden_dropout_noises_each_layers_attention_and_mlp_outputs_in_training_only():
    module = simcse(attention_dropout=0.0, hidden_dropout=0.1)
    layer = module.encoder.model.get_base_model().layers[0]
    outputs = {"self_attn": [], "mlp": []}
    for name, states in outputs.items():  # registered after the dropout's hook: they see its output
        getattr(layer, name).register_forward_hook(
            lambda m, args, output, states=states: states.append(output[0] if isinstance(output, tuple) else output))
    assert_views_differ_in_training_only(module)
    for trained, evaluated in outputs.values():
        kept = evaluated != 0  # the packed rows' padding is 0 either way
        assert 0.07 < (trained[kept] == 0).float().mean().item() < 0.13  # about one in ten dropped
    assert simcse(attention_dropout=0.0).encoder.model.get_base_model().layers[0].mlp._forward_hooks == {}


def test_simcse_refuses_a_hidden_dropout_that_is_not_a_probability():
    with pytest.raises(ValueError, match="hidden_dropout 1.0 must be a probability"):
        simcse(hidden_dropout=1.0)


def test_simcse_instruction_goes_on_the_first_view_only():
    module = simcse(attention_dropout=0.0, instruction="Instruct:")
    module.eval()
    with torch.no_grad():
        first, second = module.embed_batch(SENTENCES)
        instructed = module.encoder.encode([["Instruct:", s] for s in SENTENCES], convert_to_tensor=True)
        plain = module.encoder.encode(SENTENCES, convert_to_tensor=True)
    assert torch.allclose(first, instructed, atol=1e-5)
    assert torch.allclose(second, plain, atol=1e-5)
    assert not torch.allclose(first, second, atol=1e-3)  # the instruction changes the text's states


def test_simcse_refuses_an_empty_instruction():
    with pytest.raises(ValueError, match="non-empty"):
        simcse(instruction=" ")


def test_simcse_word_repetition_lengthens_the_second_view_only_and_repeats_itself():
    module = simcse(word_repetition=0.5)
    sentences = ["one two three four five six seven eight nine ten"] * 8 + SENTENCES
    views = module.second_views(sentences)
    assert views == module.second_views(sentences)  # a batch embedded twice (gradient caching) gets the same views
    assert all(len(view.split()) >= len(s.split()) for view, s in zip(views, sentences))
    assert any(view != s for view, s in zip(views, sentences))
    with torch.random.fork_rng():
        torch.manual_seed(7)
        assert module.second_views(sentences) != views  # another run seed, other words repeated
    assert simcse().second_views(sentences) == sentences  # off by default
    with pytest.raises(ValueError, match="word_repetition"):
        simcse(word_repetition=1.5)


def test_simcse_both_ways_trains_on_gtes_loss():
    first, second = torch.randn(4, 8), torch.randn(4, 8)
    module = simcse(both_ways=True, temperature=0.1)
    expected = ContrastiveLoss(temperature=0.1, both_ways=True)(first, second)
    torch.testing.assert_close(module.batch_loss(first, second), expected)
    plain = simcse(temperature=0.1)
    torch.testing.assert_close(plain.batch_loss(first, second), ContrastiveLoss(temperature=0.1)(first, second))
    assert not torch.allclose(expected, plain.batch_loss(first, second))  # off by default


def test_simcse_margin_trains_on_arccses_loss():
    first, second = torch.randn(4, 8), torch.randn(4, 8)
    module = simcse(margin=0.2, temperature=0.1)
    expected = ContrastiveLoss(temperature=0.1, margin=0.2)(first, second)
    torch.testing.assert_close(module.batch_loss(first, second), expected)
    assert not torch.allclose(expected, simcse(temperature=0.1).batch_loss(first, second))  # off by default
    assert torch.isfinite(manual_step(module, SENTENCES))


def test_simcse_decoupled_trains_on_dcls_loss():
    first, second = torch.randn(4, 8), torch.randn(4, 8)
    module = simcse(decoupled=True, temperature=0.1)
    expected = ContrastiveLoss(temperature=0.1, decoupled=True)(first, second)
    torch.testing.assert_close(module.batch_loss(first, second), expected)
    assert not torch.allclose(expected, simcse(temperature=0.1).batch_loss(first, second))  # off by default
    assert torch.isfinite(manual_step(module, SENTENCES))
    with pytest.raises(ValueError, match="decoupled"):
        simcse(decoupled=True, off_dropout_negatives=True)


def test_simcse_projection_head_trains_with_the_loss_and_stays_out_of_the_saved_encoder(tmp_path):
    torch.manual_seed(0)
    module = simcse(projection_head=True, attention_dropout=0.0)
    head = list(module.projection.parameters())
    optimised = {id(p) for group in module.configure_optimizers().param_groups for p in group["params"]}
    assert head and all(id(p) in optimised for p in head)
    module.eval()
    with torch.no_grad():
        first, _ = module.embed_batch(SENTENCES)
        pooled = module.encoder.encode(SENTENCES, convert_to_tensor=True)
    torch.testing.assert_close(first, module.projection(pooled), atol=1e-5, rtol=1e-4)  # the loss sees the head's output
    before = [p.detach().clone() for p in head]
    assert torch.isfinite(manual_step(module, SENTENCES))
    assert all(not torch.equal(a, b) for a, b in zip(before, head))
    module.save(tmp_path)
    assert not any("projection" in path.name for path in tmp_path.iterdir())
    loaded = LLM2Vec.from_pretrained(str(tmp_path))
    module.eval()
    with torch.no_grad():
        reference = module.encoder.encode(SENTENCES, convert_to_tensor=True)  # pooled, no head
    torch.testing.assert_close(loaded.encode(SENTENCES, convert_to_tensor=True), reference, atol=1e-5, rtol=1e-4)
    assert simcse().projection is None  # off by default


def test_simcse_off_dropout_negatives_embed_the_sentences_a_third_time_without_dropout():
    module = simcse(off_dropout_negatives=True, temperature=0.1)
    module.eval()
    with torch.no_grad():
        reference = module.encoder.encode(SENTENCES, convert_to_tensor=True)  # inference: no dropout
    module.train()
    modes = [m.training for m in module.modules()]
    first, second, plain = module.embed_batch(SENTENCES)
    assert not torch.allclose(first, second)  # the two views still go through dropout
    torch.testing.assert_close(plain, reference, atol=1e-5, rtol=1e-4)
    assert plain.requires_grad  # the negatives are trained on too
    assert [m.training for m in module.modules()] == modes  # dropout back on afterwards
    torch.testing.assert_close(module.batch_loss(first, second, plain), off_dropout_loss(first, second, plain, 0.1))
    assert torch.isfinite(manual_step(module, SENTENCES))
    assert len(simcse().embed_batch(SENTENCES)) == 2  # off by default
    for clash in (dict(queue_size=4), dict(both_ways=True), dict(margin=0.1)):
        with pytest.raises(ValueError, match="off_dropout_negatives"):
            simcse(off_dropout_negatives=True, **clash)


def test_simcse_dimension_loss_is_added_with_its_weight():
    first, second, plain = torch.randn(8, 16), torch.randn(8, 16), torch.randn(8, 16)
    module = simcse(dimension_loss_weight=0.5, temperature=0.1)
    expected = ContrastiveLoss(temperature=0.1)(first, second) + 0.5 * dimension_contrastive_loss(first, second)
    torch.testing.assert_close(module.batch_loss(first, second), expected)
    both = simcse(dimension_loss_weight=0.5, off_dropout_negatives=True, temperature=0.1)
    expected = off_dropout_loss(first, second, plain, 0.1) + 0.5 * dimension_contrastive_loss(first, second)
    torch.testing.assert_close(both.batch_loss(first, second, plain), expected)
    torch.testing.assert_close(simcse(temperature=0.1).batch_loss(first, second),
                               ContrastiveLoss(temperature=0.1)(first, second))  # off by default
    assert torch.isfinite(manual_step(module, SENTENCES))
    with pytest.raises(ValueError, match="dimension_loss_weight"):
        simcse(dimension_loss_weight=-0.1)


def test_simcse_layer_negatives_add_both_views_states_at_that_layer_to_the_negatives():
    module = simcse(layer_negatives=1, temperature=0.1)  # tiny-random-llama: 2 layers, the last one pooled
    module.eval()
    with torch.no_grad():
        first, second, layer = module.embed_batch(SENTENCES)
        at_layer = LLM2Vec.from_pretrained("tiny-random-llama", pooling_layers=1)
        at_layer.model = module.encoder.model  # the same weights (and adapter), read at layer 1
        reference = at_layer.encode(SENTENCES, convert_to_tensor=True)
    torch.testing.assert_close(layer, torch.cat([reference, reference]), atol=1e-5, rtol=1e-4)
    plain = ContrastiveLoss(temperature=0.1)(first, second)
    with_layer = ContrastiveLoss(temperature=0.1)(first, second, negatives=layer)
    torch.testing.assert_close(module.batch_loss(first, second, layer), (plain + with_layer) / 2)
    assert with_layer > plain  # each sentence's own layer-1 state is a hard negative
    module.train()
    assert torch.isfinite(manual_step(module, SENTENCES))
    assert len(simcse().embed_batch(SENTENCES)) == 2  # off by default
    for bad in (2, -1, [1], True):  # the pooled layer itself, a list, a bool
        with pytest.raises(ValueError, match="layer_negatives"):
            simcse(layer_negatives=bad)
    with pytest.raises(ValueError, match="layer_negatives"):
        simcse(layer_negatives=1, off_dropout_negatives=True)


def fit_losses(module, steps: int, resume_from: Path | None = None, save_to: Path | None = None) -> list[float]:
    """The training losses of the Lightning steps up to `steps` on the same SENTENCES batch (the same
    batch each step, so a resumed run needs no data position); optionally resumed from and saved to
    a checkpoint."""
    losses = []
    module.log_step = lambda loss, batch_size: losses.append(loss.item())
    trainer = Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=DataLoader([SENTENCES] * steps, batch_size=None), ckpt_path=resume_from)
    if save_to is not None:
        trainer.save_checkpoint(save_to)
    return losses


def test_simcse_queue_adds_the_latest_second_views_as_negatives():
    module = simcse(queue_size=6)
    first, second = torch.randn(4, 8), torch.randn(4, 8)
    assert module.batch_loss(first, second) == module.loss(first, second)  # the first step has no queue
    torch.testing.assert_close(module.queue, second)
    later_first, later_second = torch.randn(4, 8), torch.randn(4, 8)
    expected = module.loss(later_first, later_second, memory=second)
    torch.testing.assert_close(module.batch_loss(later_first, later_second), expected)
    torch.testing.assert_close(module.queue, torch.cat([second[-2:], later_second]))  # the newest 6, newest last
    plain = simcse()
    plain.batch_loss(first, second)
    assert plain.queue is None  # off by default
    with pytest.raises(ValueError, match="queue_size"):
        simcse(queue_size=-1)


def test_a_resumed_simcse_run_keeps_its_queue(tmp_path):
    def fresh():
        torch.manual_seed(0)  # the same fresh LoRA
        return simcse(queue_size=8)

    uninterrupted = fit_losses(fresh(), 3)
    fit_losses(fresh(), 2, save_to=tmp_path / "step2.ckpt")
    resumed = fit_losses(fresh(), 3, resume_from=tmp_path / "step2.ckpt")
    assert resumed == pytest.approx(uninterrupted[2:], rel=1e-5)
    checkpoint = torch.load(tmp_path / "step2.ckpt", weights_only=False)
    assert checkpoint["simcse_queue"][0].shape == (8, 64)  # 2 steps of 4 sentences, tiny-random-llama width
    del checkpoint["simcse_queue"]  # a run that lost its queue would train on other negatives
    torch.save(checkpoint, tmp_path / "no_queue.ckpt")
    forgetful = fit_losses(fresh(), 3, resume_from=tmp_path / "no_queue.ckpt")
    assert forgetful[0] != pytest.approx(uninterrupted[2], rel=1e-3)


def test_the_momentum_encoder_embeds_with_the_averaged_weights_and_dropout_off():
    torch.manual_seed(0)
    module = simcse(queue_size=8, momentum=0.5)
    module.train()
    weights = module.trainable_weights()
    own = [w.detach().clone() for w in weights]
    module.eval()
    with torch.no_grad():
        with_own_weights = module.encoder.encode(SENTENCES, convert_to_tensor=True)
    module.train()
    assert module.momentum_embeddings(SENTENCES).shape == (4, 64)
    assert all(torch.equal(a, w) for a, w in zip(module.momentum_weights, own))  # it starts as the encoder
    averaged = [w + 0.05 * torch.randn_like(w) for w in own]  # some other weights, LoRA's B included
    module.momentum_weights = [a.clone() for a in averaged]
    modes = [m.training for m in module.modules()]
    keys = module.momentum_embeddings(SENTENCES)
    assert not keys.requires_grad
    assert all(torch.equal(w, o) for w, o in zip(weights, own))  # the encoder's own weights are back
    assert [m.training for m in module.modules()] == modes  # and dropout on again
    module.mini_batch_size = 3  # embedded in chunks (gradient caching): the same keys
    torch.testing.assert_close(module.momentum_embeddings(SENTENCES), keys, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        for weight, value in zip(weights, averaged):
            weight.copy_(value)
    module.eval()
    with torch.no_grad():
        reference = module.encoder.encode(SENTENCES, convert_to_tensor=True)
    torch.testing.assert_close(keys, reference, atol=1e-5, rtol=1e-4)  # inference with the averaged weights
    assert not torch.allclose(keys, with_own_weights, atol=1e-3)


def test_the_momentum_encoders_keys_fill_the_queue():
    module = simcse(queue_size=8, momentum=0.9)
    first, second, keys = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
    module.momentum_keys = keys
    torch.testing.assert_close(module.batch_loss(first, second), module.loss(first, second))
    torch.testing.assert_close(module.queue, keys)  # not the second views
    later_first, later_second = torch.randn(4, 8), torch.randn(4, 8)
    torch.testing.assert_close(module.batch_loss(later_first, later_second),
                               module.loss(later_first, later_second, memory=keys))
    for wrong in (dict(momentum=0.5), dict(momentum=1.0, queue_size=8), dict(momentum=-0.1, queue_size=8)):
        with pytest.raises(ValueError, match="momentum"):
            simcse(**wrong)


def test_the_momentum_average_follows_every_optimizer_step():
    torch.manual_seed(0)
    module = simcse(queue_size=8, momentum=0.75)
    initial = [w.detach().clone() for w in module.trainable_weights()]
    after_each_step = []

    class RecordWeights(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            after_each_step.append([w.detach().clone() for w in pl_module.trainable_weights()])

    module.log_step = lambda *args, **kwargs: None
    trainer = Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[RecordWeights()])
    trainer.fit(module, train_dataloaders=DataLoader([SENTENCES] * 3, batch_size=None))
    expected = initial
    for weights in after_each_step:
        expected = [0.75 * average + 0.25 * weight for average, weight in zip(expected, weights)]
    for average, wanted in zip(module.momentum_weights, expected):
        torch.testing.assert_close(average, wanted)
    assert not all(torch.allclose(a, w) for a, w in zip(module.momentum_weights, after_each_step[-1]))
    assert module.queue.shape == (8, 64)


def test_a_resumed_simcse_run_keeps_its_momentum_encoder(tmp_path):
    def fresh():
        torch.manual_seed(0)  # the same fresh LoRA
        encoder = LLM2Vec.from_pretrained("tiny-random-llama", pooling_mode="mean")
        return SimCSE(encoder, LORA, functools.partial(torch.optim.AdamW, lr=0.05), queue_size=8, momentum=0.5)

    uninterrupted = fit_losses(fresh(), 4)
    fit_losses(fresh(), 2, save_to=tmp_path / "step2.ckpt")
    resumed = fit_losses(fresh(), 4, resume_from=tmp_path / "step2.ckpt")
    assert resumed == pytest.approx(uninterrupted[2:], rel=1e-5)
    checkpoint = torch.load(tmp_path / "step2.ckpt", weights_only=False)
    del checkpoint["simcse_momentum_weights"]  # it would restart from the current weights
    torch.save(checkpoint, tmp_path / "no_momentum.ckpt")
    forgetful = fit_losses(fresh(), 4, resume_from=tmp_path / "no_momentum.ckpt")
    assert forgetful[1] != pytest.approx(uninterrupted[3], rel=1e-4)  # step 4's queue holds step 3's keys


def test_simcse_pools_in_training_exactly_as_the_encoder_at_inference():
    module = simcse(pooling_mode="weighted_mean")
    module.eval()
    with torch.no_grad():
        trained_view = module.embed([["Instruct:", s] for s in SENTENCES])
    inference = module.encoder.encode([["Instruct:", s] for s in SENTENCES], convert_to_tensor=True)
    assert torch.allclose(trained_view, inference, atol=1e-5)


def test_simcse_feeds_the_model_packed_rows_without_padding_compute():
    module = simcse()
    rows = []
    module.encoder.model.register_forward_pre_hook(
        lambda m, args, kwargs: rows.append(kwargs["input_ids"].shape), with_kwargs=True)
    manual_step(module, SENTENCES)
    padded = module.encoder.tokenize(SENTENCES + SENTENCES)["input_ids"].shape
    assert rows and rows[0][0] * rows[0][1] < padded[0] * padded[1]




def test_compiled_decoder_layers_train_like_eager_ones():
    eager, compiled = simcse(attention_dropout=0.0), simcse(attention_dropout=0.0, compile_layers=True)
    compiled.encoder.model.load_state_dict(eager.encoder.model.state_dict())  # the same fresh LoRA
    eager_losses, compiled_losses = fit_losses(eager, 3), fit_losses(compiled, 3)
    layers = compiled.encoder.model.get_base_model().layers
    assert all(layer._compiled_call_impl is not None for layer in layers)
    assert eager_losses[0] != eager_losses[-1]  # the steps train
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)


def test_compiling_a_model_without_decoder_layers_is_refused():
    with pytest.raises(ValueError, match="no decoder layers found in Sequential"):
        compile_decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_without_a_cpp_compiler_cpu_training_stays_eager(caplog):
    import torch._inductor.config

    module = simcse()
    # The config's own patch: pytest's monkeypatch, undone, left `cpp.cxx` unreadable for later tests.
    with torch._inductor.config.patch({"cpp.cxx": (None, "no-such-compiler++")}):
        assert compile_decoder_layers(module.encoder.model) == 0
    assert all(layer._compiled_call_impl is None for layer in module.encoder.model.get_base_model().layers)
    assert "no C++ compiler found" in caplog.text


def test_latent_attention_pooling_is_optimised_and_saved(tmp_path):
    module = simcse(pooling_mode="latent_attention", attention_dropout=0.1)
    pooling = list(module.encoder.pooling.parameters())
    optimised = {id(p) for group in module.configure_optimizers().param_groups for p in group["params"]}
    assert pooling and all(id(p) in optimised for p in pooling)
    before = [p.detach().clone() for p in pooling]
    assert torch.isfinite(manual_step(module, SENTENCES))
    assert any(not torch.equal(a, b) for a, b in zip(before, pooling))
    module.save(tmp_path)
    loaded = LLM2Vec.from_pretrained(str(tmp_path))
    assert loaded.pooling_mode == "latent_attention"
    assert all(torch.equal(a, b.to(a.dtype)) for a, b in zip(loaded.pooling.parameters(), pooling))


# ----------------------------------------------------------------------------- full fine-tuning


def weights_of(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_full_fine_tuning_trains_all_but_the_embeddings_and_saves_the_whole_decoder(tmp_path):
    mntp = MNTP("tiny-random-llama", LORA, ADAMW, dtype="float32")  # LoRA, then merged into the full fine-tuning
    mntp.save(tmp_path / "mntp")
    encoder = LLM2Vec.from_pretrained(str(tmp_path / "mntp"), merge_peft=True)
    module = SimCSE(encoder, None, ADAMW)
    model = module.encoder.model
    assert not isinstance(model, PeftModel)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name, _ in model.named_parameters()} - {"embed_tokens.weight"}
    before = weights_of(model)
    assert torch.isfinite(manual_step(module, SENTENCES))
    after = weights_of(model)
    assert torch.equal(after["embed_tokens.weight"], before["embed_tokens.weight"])
    assert all(not torch.equal(after[name], before[name]) for name in trainable if "proj" in name)

    module.save(tmp_path / "full")
    saved = json.loads((tmp_path / "full" / "llm2vec_config.json").read_text())
    assert saved["decoder"] == "decoder" and saved["merged_adapters"] == []  # MNTP's adapter is in the weights
    assert not (tmp_path / "full" / "adapter_config.json").exists()
    module.eval()
    with torch.no_grad():
        trained = module.encoder.encode(SENTENCES, convert_to_tensor=True)
        loaded = LLM2Vec.from_pretrained(str(tmp_path / "full")).encode(SENTENCES, convert_to_tensor=True)
        started_from = LLM2Vec.from_pretrained(str(tmp_path / "mntp")).encode(SENTENCES, convert_to_tensor=True)
    torch.testing.assert_close(loaded, trained)
    assert not torch.allclose(loaded, started_from, atol=1e-4)


def test_a_lora_stage_after_full_fine_tuning_saves_the_decoder_with_its_adapter(tmp_path):
    # Full-fine-tuned MNTP with a new <mask> row, dropped again at save (on the plain decoder).
    mntp = MNTP("tiny-random-llama", None, ADAMW, mask_token_type="mask", mask_ratio=0.5, dtype="float32")
    ids = torch.randint(3, 1000, (2, 16))
    assert torch.isfinite(manual_step(mntp, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}))
    mntp.save(tmp_path / "mntp")
    assert (tmp_path / "mntp" / "decoder" / "config.json").is_file()

    module = SimCSE(LLM2Vec.from_pretrained(str(tmp_path / "mntp"), merge_peft=True), LORA, ADAMW)
    assert torch.isfinite(manual_step(module, SENTENCES))
    module.save(tmp_path / "simcse")
    assert (tmp_path / "simcse" / "decoder" / "config.json").is_file()  # copied: the adapter's base
    assert (tmp_path / "simcse" / "adapter_config.json").is_file()
    module.eval()
    with torch.no_grad():
        trained = module.encoder.encode(SENTENCES, convert_to_tensor=True)
        loaded = LLM2Vec.from_pretrained(str(tmp_path / "simcse")).encode(SENTENCES, convert_to_tensor=True)
        base = LLM2Vec.from_pretrained("tiny-random-llama").encode(SENTENCES, convert_to_tensor=True)
    torch.testing.assert_close(loaded, trained)
    assert not torch.allclose(loaded, base, atol=1e-4)


def test_full_fine_tuning_refuses_16_bit_weights():
    encoder = LLM2Vec.from_pretrained("tiny-random-llama", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="full fine-tuning .* needs float32 weights, not torch.bfloat16"):
        SimCSE(encoder, None, ADAMW)


# ----------------------------------------------------------------------------- supervised


def test_supervised_step_uses_queries_positives_and_hard_negatives():
    data = Pairs([str(FIXTURES / "pairs")], batch_size=4)
    data.setup()
    batch = data.collate(data.datasets["nli"][:4])
    module = Supervised(LLM2Vec.from_pretrained("tiny-random-llama"), LORA, ADAMW)
    seen = []
    loss_forward = module.loss.forward
    module.loss.forward = lambda q, p, n=None: seen.append((q.shape, p.shape, n.shape)) or loss_forward(q, p, n)
    loss = manual_step(module, batch)
    assert torch.isfinite(loss)
    assert seen == [(torch.Size([4, 64]),) * 3]
    with_instruction = module.encoder.tokenize(batch["query"])
    plain = module.encoder.tokenize([query for _, query in batch["query"]])
    # the instruction is attended to, never pooled
    assert (with_instruction["attention_mask"].sum(1) > plain["attention_mask"].sum(1)).all()
    assert torch.equal(with_instruction["embed_mask"].sum(1), plain["embed_mask"].sum(1))


def test_supervised_step_defaults_to_the_papers_temperature_and_passes_the_rest_on():
    assert Supervised(LLM2Vec.from_pretrained("tiny-random-llama"), LORA, ADAMW).loss.temperature == 0.02
    module = Supervised(LLM2Vec.from_pretrained("tiny-random-llama"), LORA, ADAMW, mini_batch_size=2, both_ways=True, margin=0.1)
    assert (module.mini_batch_size, module.loss.both_ways, module.loss.margin) == (2, True, 0.1)
    with pytest.raises(TypeError, match="attention_dropout"):  # a SimCSE option: not silently dropped
        Supervised(LLM2Vec.from_pretrained("tiny-random-llama"), LORA, ADAMW, attention_dropout=0.3)


def test_replaced_token_detection_refills_masked_text_tokens_with_the_generators_argmax():
    detection = ReplacedTokenDetection(hidden_size=4, mask_token_id=9, vocab_size=16, mask_ratio=1.0,
                                       special_token_ids=(1,))
    features = {"input_ids": torch.tensor([[1, 5, 6, 7], [1, 5, 6, 0]]),
                "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
                "embed_mask": torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]])}
    seen = []

    def states(masked_ids):  # position p's state points at token (10 + p): output row 10 + p
        seen.append(masked_ids)
        return torch.nn.functional.one_hot(torch.arange(4) + 10, 16).float().expand(2, 4, 16)

    output_embeddings = torch.eye(16)
    output_embeddings[9, 10] = 2.0  # the mask token scores highest at position 0, and is never guessed
    edited, replaced = detection.edit(features, states, output_embeddings)
    # every text token after a real one is masked; BOS (special, first) and padding are not
    assert seen[0].tolist() == [[1, 9, 9, 9], [1, 9, 9, 0]]
    assert edited.tolist() == [[1, 10, 11, 12], [1, 10, 11, 0]]  # token i from position i-1
    assert replaced.tolist() == [[False, True, True, True], [False, True, True, False]]
    originals_first = torch.eye(16)[[0, 1, 2, 3, 4, 10, 11, 12, 8, 9, 5, 6, 7, 13, 14, 15]]  # rows 5-7 score best
    guessed_right = detection.edit(features, states, originals_first)
    assert not guessed_right[1].any()  # a guess equal to the original is no replacement
    with pytest.raises(ValueError, match="mask_ratio"):
        ReplacedTokenDetection(4, 9, 16, mask_ratio=0.0)


def test_simcse_replaced_token_loss_conditions_the_encoder_on_the_sentence_embedding():
    torch.manual_seed(0)
    module = simcse(replaced_token_weight=0.5, replaced_token_ratio=0.5, temperature=0.1)
    detection = module.replaced_tokens
    optimised = {id(p) for group in module.configure_optimizers().param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in detection.parameters())
    module.train()
    first, _ = module.embed_batch(SENTENCES)
    features = module.encoder.tokenize(SENTENCES)
    edited, replaced = detection.edit(features, lambda ids: module.encoder.model(input_ids=ids).last_hidden_state,
                                      module.encoder.model.get_input_embeddings().weight)
    assert replaced.any() and not replaced[features["embed_mask"] == 0].any()
    with torch.no_grad():  # the map starts at zero: every sentence embedding gives the same loss
        detection.condition.weight.normal_(std=0.5)
    first.retain_grad()
    loss = detection.loss(module.encoder.model, features, edited, replaced, first)
    other = detection.loss(module.encoder.model, features, edited, replaced, first.flip(0))
    assert torch.isfinite(loss) and not torch.isclose(loss, other)  # the discriminator reads the embedding
    loss.backward()
    assert first.grad.abs().sum() > 0 and detection.condition.weight.grad.abs().sum() > 0  # into the embedding
    lora = [p for name, p in module.encoder.model.named_parameters() if "lora_B" in name]
    module.zero_grad()
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    before = [p.detach().clone() for p in lora]
    assert torch.isfinite(manual_step(module, SENTENCES)) and logged["train/replaced_token_loss"] > 0
    assert all(not torch.equal(a, b) for a, b in zip(before, lora))
    assert simcse().replaced_tokens is None  # off by default


def test_simcse_replaced_token_lr_trains_the_discriminators_own_layers_at_their_own_rate():
    module = simcse(replaced_token_weight=0.005, replaced_token_lr=0.5)
    encoder_group, own_group = module.configure_optimizers().param_groups
    own = list(module.replaced_tokens.parameters())
    assert [id(p) for p in own_group["params"]] == [id(p) for p in own] and own_group["lr"] == 0.5
    assert {id(p) for p in encoder_group["params"]} == {id(p) for p in module.trainable_weights()} - {id(p) for p in own}
    assert encoder_group["lr"] == ADAMW.keywords["lr"]
    # one step moves the head's bias by about its own lr (Adam's first step is the gradient's sign)
    bias = module.replaced_tokens.head.bias.detach().clone()
    optimizer = module.configure_optimizers()
    module.replaced_token_loss(SENTENCES, module.embed_batch(SENTENCES)[0]).backward()
    optimizer.step()
    assert torch.allclose((module.replaced_tokens.head.bias - bias).abs(), torch.tensor(0.5), atol=1e-3)
    assert len(simcse(replaced_token_weight=0.005).configure_optimizers().param_groups) == 1  # null: one rate


def test_simcse_replaced_token_loss_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="replaced_token_weight"):
        simcse(replaced_token_weight=-1.0)
    with pytest.raises(ValueError, match="replaced_token_lr"):
        simcse(replaced_token_weight=0.005, replaced_token_lr=0.0)
    with pytest.raises(ValueError, match="replaced_token_lr needs replaced_token_weight"):
        simcse(replaced_token_lr=1e-3)
    with pytest.raises(ValueError, match="gradient caching"):
        simcse(replaced_token_weight=0.005, mini_batch_size=2)
    encoder = LLM2Vec.from_pretrained("tiny-random-llama")
    with pytest.raises(ValueError, match="LoRA adapter"):
        SimCSE(encoder, None, ADAMW, replaced_token_weight=0.005)
    encoder.model.config.tie_word_embeddings = False
    with pytest.raises(ValueError, match="does not tie"):
        SimCSE(encoder, LORA, ADAMW, replaced_token_weight=0.005)
