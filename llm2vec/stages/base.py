"""What every training stage shares: LoRA on the decoder backbone (or full fine-tuning), the optimizer
and its schedule, lean checkpoints (trainable weights only) and saving the encoder into the run directory."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from lightning import LightningModule
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import PreTrainedModel

from llm2vec.distributed import gather_trainable_parameters, shard_decoder_layers
from llm2vec.encoder import LLM2Vec

logger = logging.getLogger(__name__)


def make_trainable(backbone: nn.Module, lora: dict | None, gradient_checkpointing: bool = False) -> nn.Module:
    """A fresh LoRA adapter (keys of peft's LoraConfig: r, lora_alpha, lora_dropout, target_modules)
    on the bare decoder stack, so the saved adapter loads onto the backbone the encoder uses; with
    `lora` None, full fine-tuning (`train_all_weights`)."""
    if gradient_checkpointing:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora is None:
        return train_all_weights(backbone)
    return get_peft_model(backbone, LoraConfig(**lora))


def train_all_weights(backbone: nn.Module) -> nn.Module:
    """Full fine-tuning (`lora: null`), as SimCSE trained BERT: every weight of the decoder trains but
    the token embeddings (tied to the LM head in small decoders, and most of their parameters: 63% of
    Gemma-3-270M's), so the vocabulary's geometry stays the pretrained one."""
    sixteen_bit = (torch.bfloat16, torch.float16)
    low_precision = sorted({str(p.dtype) for p in backbone.parameters() if p.dtype in sixteen_bit})
    if low_precision:
        raise ValueError(f"full fine-tuning (lora: null) needs float32 weights, not {', '.join(low_precision)}: "
                         "AdamW's small updates round away in 16-bit weights (set model.dtype=float32; "
                         "bf16-mixed precision still runs the matmuls in bfloat16)")
    backbone.requires_grad_(True)
    backbone.get_input_embeddings().requires_grad_(False)
    return backbone


def set_attention_dropout(model: nn.Module, probability: float) -> None:
    """Dropout on the attention weights of every attention module (active in training mode only)."""
    modules = [m for m in model.modules() if isinstance(getattr(m, "attention_dropout", None), float)]
    if not modules and probability > 0:
        raise ValueError(f"attention_dropout: {type(model).__name__} has no attention module with an attention_dropout")
    for module in modules:
        module.attention_dropout = probability


def add_hidden_dropout(model: nn.Module, probability: float) -> None:
    """BERT's hidden dropout, the noise of SimCSE-BERT (0.1 there): dropout on each decoder layer's
    attention and MLP outputs before they join the residual stream, which decoders such as Llama
    and Gemma do not have. Forward hooks, active in training mode only; 0 adds none."""
    if not 0.0 <= probability < 1.0:
        raise ValueError(f"hidden_dropout {probability!r} must be a probability in [0, 1) (0: off)")
    if not probability:
        return
    blocks = [block for layer in decoder_layers(model) for name, block in layer.named_children()
              if name in ("self_attn", "mlp")]
    if not blocks:
        raise ValueError(f"hidden_dropout: no self_attn or mlp block in the decoder layers of {type(model).__name__}")
    for block in blocks:
        block.register_forward_hook(partial(_drop_block_output, probability))


def _drop_block_output(probability: float, block: nn.Module, inputs, output):
    if isinstance(output, tuple):  # attention: (states, weights)
        return (nn.functional.dropout(output[0], probability, block.training), *output[1:])
    return nn.functional.dropout(output, probability, block.training)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder's repeated blocks: transformers names their class in `_no_split_modules`."""
    models = [m for m in model.modules() if isinstance(m, PreTrainedModel)]
    layer_classes = {name for m in models for name in m._no_split_modules or []}
    return [m for m in model.modules() if type(m).__name__ in layer_classes]


def skip_adapter_input_casts(model: nn.Module) -> None:
    """Under autocast the matmuls pick their own dtype; without this, peft copies every activation
    into the adapter's float32 before each LoRA matmul (a large share of a CPU training step)."""
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.cast_input_dtype_enabled = False


def compile_decoder_layers(model: nn.Module) -> int:
    """Regional compilation: torch.compile every decoder layer in place. The layers share one compiled
    graph (compiling costs about one layer's time) that fuses their element-wise work, LoRA's and the
    autocast casts included; masks, pooling and the loss stay eager. Returns the number of layers
    compiled: none on a CPU without a C++ compiler (inductor's CPU kernels need one), with a warning."""
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(f"compile_layers: no decoder layers found in {type(model).__name__}")
    if next(model.parameters()).device.type == "cpu" and not has_cpp_compiler():
        logger.warning("compile_layers: no C++ compiler found (torch.compile needs one on CPU); training eagerly")
        return 0
    for layer in layers:
        layer.compile()
    return len(layers)


def has_cpp_compiler() -> bool:
    from torch._inductor.cpp_builder import get_cpp_compiler  # inductor's own search (g++, clang++, $CXX)

    try:
        get_cpp_compiler()
    except Exception:  # inductor raises its InvalidCxxCompiler
        return False
    return True


def rng_states() -> dict:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def gather_from_all_processes(value) -> list:
    """[value of rank 0, value of rank 1, ...]; [value] without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def torch_dtype(dtype: str | torch.dtype | None):
    return getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype


class TrainingStage(LightningModule):
    """Base of the stages: subclasses set `self.encoder` (an LLM2Vec whose model is a PeftModel, or
    the plain decoder with its weights trainable: full fine-tuning)."""

    encoder: LLM2Vec

    def __init__(self, optimizer: Callable, scheduler: Callable | None = None, compile_layers: bool = False):
        super().__init__()
        self.compile_layers = compile_layers  # torch.compile the decoder layers when training starts
        self.make_optimizer = optimizer  # e.g. functools.partial(torch.optim.AdamW, lr=1e-4)
        self.make_scheduler = scheduler  # e.g. partial(get_linear_schedule_with_warmup, ...), stepped per step
        self.strict_loading = False  # checkpoints hold the trainable weights only

    @property
    def tokenizer(self):
        return self.encoder.tokenizer

    def trainable_weights(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_groups(self) -> list[nn.Parameter] | list[dict]:
        """What the optimizer trains: the trainable weights, or groups of them with their own settings."""
        return self.trainable_weights()

    def configure_optimizers(self):
        optimizer = self.make_optimizer(self.parameter_groups())
        if self.make_scheduler is None:
            return optimizer
        scheduler = self.make_scheduler(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def sharded_root(self) -> nn.Module:
        """The module training_step calls: under FSDP2 its call gathers the weights outside the layers."""
        return self.encoder

    def configure_model(self) -> None:
        # trainer=fsdp_cpu (Lightning's ModelParallelStrategy gives the device mesh): FSDP2 sharding.
        if self.device_mesh is not None:
            shard_decoder_layers(self.sharded_root(), self.device_mesh["data_parallel"])

    def on_fit_end(self) -> None:
        # Every process is still here (rank 0 alone saves afterwards): gather a sharded adapter whole.
        if self.device_mesh is not None:
            gather_trainable_parameters(self)

    def on_fit_start(self) -> None:
        self.train()  # models come from from_pretrained in eval mode; dropout must be on while training
        if "mixed" in str(self.trainer.precision):
            skip_adapter_input_casts(self)
        if self.compile_layers:
            compile_decoder_layers(self.encoder.model)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The frozen base is rebuilt from its source on resume: keep checkpoints adapter-sized.
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        # Masking and dropout draw from these: a resumed run continues exactly where this one is.
        # Every process draws its own numbers, so the checkpoint keeps each process's states.
        checkpoint["rng_states"] = gather_from_all_processes(rng_states())
        for logger in self.loggers:  # the logs up to this checkpoint survive a kill
            logger.save()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        per_process = checkpoint.get("rng_states", [])
        if isinstance(per_process, dict):  # checkpoints of one process, written before states were per process
            per_process = [per_process]
        if per_process and len(per_process) != self.trainer.world_size:  # the data split differs anyway
            logger.warning(f"resume: the checkpoint holds random states of {len(per_process)} processes, "
                           f"this run has {self.trainer.world_size}; the random draws will not continue exactly")
        self._rng_states_to_restore = per_process[self.global_rank] if self.global_rank < len(per_process) else {}

    def on_train_start(self) -> None:
        # Restored here, after the trainer has set up the data loader (whose iterator draws a seed).
        states = getattr(self, "_rng_states_to_restore", {})
        if "cpu" in states:
            torch.set_rng_state(states["cpu"])
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state(states["cuda"])
        self._rng_states_to_restore = {}

    def log_step(self, loss: torch.Tensor, batch_size: int) -> None:
        # The mean over processes: under DDP/FSDP the contrastive loss of the global batch, not rank 0's part.
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=batch_size)

    def save(self, path: str | Path) -> Path:
        """Write the encoder (adapter, llm2vec_config.json, pooling weights): from_pretrained(path) loads it."""
        return self.encoder.save(path)
