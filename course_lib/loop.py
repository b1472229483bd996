"""A training loop in plain PyTorch, small enough to read in one sitting.

What ``transformers.Trainer`` does for you, written out: a config dataclass, a
``DataLoader`` with a seeded shuffle, AdamW with a linear warm-up, gradient
accumulation, gradient clipping, periodic evaluation with early stopping,
checkpoints that hold everything needed to resume bit-for-bit (model, optimizer,
scheduler, RNG states, position in the data), a tqdm progress bar, an experiment
tracker (JSON lines or TensorBoard), NaN/inf detection, a memory estimate and
a ``torch.profiler`` summary. It works with any causal LM whose forward accepts
``input_ids`` and ``labels`` (the course LM, or a Hub model).
"""
from __future__ import annotations

import itertools
import json
import math
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from .profiles import CourseError

CHECKPOINT_PREFIX = "checkpoint-"
MODEL_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"
INFO_FILE = "checkpoint.json"
BEST_FOLDER = "best"


class NonFiniteError(CourseError):
    """The loss or the gradient norm became NaN or infinite; the message names the step."""


@dataclass
class LoopConfig:
    """Everything that decides a run. Steps count optimizer updates, not micro-batches.

    ``batch_size`` is the micro-batch; one optimizer step sees
    ``batch_size * grad_accum_steps`` blocks. ``eval_every=None`` never evaluates,
    ``patience=None`` never stops early, ``save_every=None`` saves no periodic checkpoint.
    """

    max_steps: int = 60
    batch_size: int = 8
    grad_accum_steps: int = 1
    lr: float = 2e-3
    warmup_steps: int = 10
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float | None = 1.0
    eval_every: int | None = 20
    eval_batches: int = 8
    patience: int | None = None
    min_delta: float = 0.0
    save_every: int | None = None
    keep_checkpoints: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)
        positive = {"max_steps": self.max_steps, "batch_size": self.batch_size,
                    "grad_accum_steps": self.grad_accum_steps, "eval_batches": self.eval_batches,
                    "keep_checkpoints": self.keep_checkpoints}
        for optional in ("eval_every", "patience", "save_every"):
            if getattr(self, optional) is not None:
                positive[optional] = getattr(self, optional)
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LoopConfig.{name} must be a positive integer, got {value!r}.")
        if not self.lr > 0:
            raise ValueError(f"LoopConfig.lr must be > 0, got {self.lr}.")
        if self.warmup_steps < 0:
            raise ValueError(f"LoopConfig.warmup_steps must be >= 0, got {self.warmup_steps}.")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"LoopConfig.max_grad_norm must be > 0 or None, got {self.max_grad_norm}.")
        if self.patience is not None and self.eval_every is None:
            raise ValueError("Early stopping needs evaluations: set eval_every when patience is set.")

    @property
    def blocks_per_step(self) -> int:
        """Blocks (sequences) behind one optimizer step."""
        return self.batch_size * self.grad_accum_steps


# --- schedule ---------------------------------------------------------------------------------

def warmup_factor(step: int, warmup_steps: int) -> float:
    """Learning-rate multiplier for optimizer step ``step`` (0-based): linear warm-up from
    ``1/warmup_steps`` to 1 over ``warmup_steps`` steps, then constant.

    Constant after warm-up because decay schedules lost to it in short runs of the course LM.
    """
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def make_optimizer(model: torch.nn.Module, config: LoopConfig):
    """AdamW (no weight decay on norms and biases) and its warm-up ``LambdaLR`` scheduler."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=config.adam_betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_factor(step, config.warmup_steps))
    return optimizer, scheduler


# --- data ---------------------------------------------------------------------------------------

def make_loader(blocks: torch.Tensor, batch_size: int, shuffle: bool = True) -> DataLoader:
    """A ``DataLoader`` over packed ``(n, block_size)`` token blocks.

    Shuffling draws from the loader's own generator (seed it per epoch), so the data
    order does not depend on, or disturb, the global RNG.
    """
    if blocks.ndim != 2:
        raise ValueError(f"blocks must be 2-D (n_blocks, block_size), got shape {tuple(blocks.shape)}; "
                         "use course_lib.assets.pretrain.pack_blocks.")
    if len(blocks) < batch_size:
        raise ValueError(f"{len(blocks)} blocks cannot fill one batch of {batch_size}.")
    return DataLoader(TensorDataset(blocks), batch_size=batch_size, shuffle=shuffle, drop_last=True,
                      generator=torch.Generator() if shuffle else None)


class BatchStream:
    """Endless micro-batches from a loader, epoch after epoch, with a resumable position.

    Epoch ``e`` is shuffled with seed ``seed + e``, so ``(epoch, batches_done)`` is all a
    checkpoint needs to continue the exact same order.
    """

    def __init__(self, loader: DataLoader, seed: int, epoch: int = 0, batches_done: int = 0):
        self.loader, self.seed = loader, seed
        self.epoch, self.batches_done = epoch, batches_done
        self._iterator = self._start_epoch(skip=batches_done)

    def _start_epoch(self, skip: int = 0) -> Iterator:
        if self.loader.generator is not None:
            self.loader.generator.manual_seed(self.seed + self.epoch)
        return itertools.islice(iter(self.loader), skip, None)

    def next(self) -> torch.Tensor:
        try:
            (batch,) = next(self._iterator)
        except StopIteration:
            self.epoch, self.batches_done = self.epoch + 1, 0
            self._iterator = self._start_epoch()
            (batch,) = next(self._iterator)
        self.batches_done += 1
        return batch

    def position(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done}


# --- gradients ----------------------------------------------------------------------------------

def check_finite(value: torch.Tensor | float, what: str, step: int, where: str = "",
                 hint: str = "") -> None:
    """Raise :class:`NonFiniteError` naming ``step`` when ``value`` is NaN or infinite."""
    number = value.item() if torch.is_tensor(value) else float(value)
    if not math.isfinite(number):
        raise NonFiniteError(f"{what} is {number} at step {step}{where}. {hint}".strip())


def accumulate_gradients(model: torch.nn.Module, micro_batches: list[torch.Tensor],
                         step: int = 0) -> float:
    """Forward and backward over ``micro_batches``, each loss divided by their number.

    The gradients left in ``.grad`` equal those of one forward/backward on the
    concatenated batch (every block is full, so every micro-batch has the same
    token count and the mean of means is the overall mean). Returns the mean loss.
    """
    if not micro_batches:
        raise ValueError("accumulate_gradients needs at least one micro-batch.")
    total = 0.0
    for index, batch in enumerate(micro_batches):
        batch = batch.to(model.device)
        loss = model(input_ids=batch, labels=batch).loss
        check_finite(loss, "the loss", step, f" (micro-batch {index + 1} of {len(micro_batches)})",
                     "Lower the learning rate, check the data, or resume from the last checkpoint.")
        (loss / len(micro_batches)).backward()
        total += loss.item()
    return total / len(micro_batches)


def accumulation_gap(model: torch.nn.Module, batch: torch.Tensor, micro_batches: int) -> dict:
    """Compare the gradient of ``batch`` in one pass with the one accumulated over
    ``micro_batches`` equal parts. Leaves ``.grad`` empty."""
    if micro_batches < 1 or len(batch) % micro_batches:
        raise ValueError(f"{len(batch)} blocks do not split into {micro_batches} equal micro-batches.")
    model.zero_grad(set_to_none=True)
    accumulate_gradients(model, [batch])
    big = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    accumulate_gradients(model, list(batch.chunk(micro_batches)))
    gap = max((p.grad - g).abs().max().item() for p, g in zip(model.parameters(), big))
    model.zero_grad(set_to_none=True)
    return {"blocks": len(batch), "micro-batches": micro_batches,
            "largest |gradient|": max(g.abs().max().item() for g in big), "max |difference|": gap}


@torch.no_grad()
def evaluate(model: torch.nn.Module, blocks: torch.Tensor, batch_size: int, max_batches: int) -> float:
    """Mean next-token loss over the first ``max_batches`` batches of ``blocks`` (a fixed subset)."""
    was_training = model.training
    model.eval()
    losses = []
    for start in range(0, min(len(blocks), batch_size * max_batches), batch_size):
        batch = blocks[start: start + batch_size].to(model.device)
        losses.append(model(input_ids=batch, labels=batch).loss.item())
    model.train(was_training)
    return sum(losses) / len(losses)


# --- experiment trackers -----------------------------------------------------------------------

class Tracker(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def close(self) -> None: ...


class JsonlTracker:
    """Appends one JSON object per ``log`` call to a file: ``{"step": 3, "train/loss": 4.2, ...}``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a", encoding="utf-8")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._handle.write(json.dumps({"step": step, **metrics}) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def read(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line]


class TensorBoardTracker:
    """Writes scalars to TensorBoard event files in ``logdir`` (view with ``tensorboard --logdir``)."""

    def __init__(self, logdir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = Path(logdir)
        self._writer = SummaryWriter(str(self.logdir))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for tag, value in metrics.items():
            self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self._writer.close()


def read_tensorboard_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a TensorBoard log folder: ``{tag: [(step, value), ...]}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


# --- checkpoints ---------------------------------------------------------------------------------

def _rng_state() -> dict:
    numpy_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"kind": numpy_state[0], "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
                      "pos": int(numpy_state[2]), "has_gauss": int(numpy_state[3]),
                      "cached_gaussian": float(numpy_state[4])}}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))


def save_checkpoint(folder: str | Path, model, optimizer, scheduler, loop_state: dict) -> Path:
    """Save model weights (safetensors), optimizer, scheduler, RNG states and ``loop_state``.

    ``loop_state`` holds the step, the data position and the early-stopping counters,
    plain Python values only. Returns the checkpoint folder.
    """
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / MODEL_FILE))  # handles tied weights, unlike save_file
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": _rng_state(), "loop": loop_state}, folder / STATE_FILE)
    (folder / INFO_FILE).write_text(json.dumps(
        {"step": loop_state["step"], "loss": loop_state.get("last_loss")}, indent=1))
    return folder


def load_checkpoint(folder: str | Path, model, optimizer, scheduler) -> dict:
    """Restore what :func:`save_checkpoint` wrote into ``model``, ``optimizer``, ``scheduler`` and
    the global RNGs; returns the saved ``loop_state``."""
    from safetensors.torch import load_model

    folder = Path(folder)
    missing = [name for name in (MODEL_FILE, STATE_FILE) if not (folder / name).exists()]
    if missing:
        raise CourseError(f"{folder} is not a complete checkpoint (missing {', '.join(missing)}); "
                          f"pass a {CHECKPOINT_PREFIX}N folder written by save_checkpoint.")
    load_model(model, str(folder / MODEL_FILE))
    state = torch.load(folder / STATE_FILE, weights_only=True)  # no code runs on load
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return state["loop"]


def save_best_weights(output_dir: str | Path, model, step: int, val_loss: float) -> Path:
    """Keep the weights of the best evaluation so far in ``output_dir/best`` (safetensors)."""
    from safetensors.torch import save_model

    folder = Path(output_dir) / BEST_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / MODEL_FILE))
    (folder / INFO_FILE).write_text(json.dumps({"step": step, "val_loss": val_loss}, indent=1))
    return folder


def load_best_weights(model, output_dir: str | Path) -> dict:
    """Load the weights :func:`train` kept at its best evaluation; returns ``{"step", "val_loss"}``."""
    from safetensors.torch import load_model

    folder = Path(output_dir) / BEST_FOLDER
    if not (folder / MODEL_FILE).exists():
        raise CourseError(f"No best weights in {folder}: train with an output_dir and eval_every set.")
    load_model(model, str(folder / MODEL_FILE))
    return json.loads((folder / INFO_FILE).read_text())


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint folders in ``output_dir``, oldest (lowest step) first."""
    folders = Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*")
    return sorted((f for f in folders if f.name[len(CHECKPOINT_PREFIX):].isdigit()),
                  key=lambda f: int(f.name[len(CHECKPOINT_PREFIX):]))


def _rotate(output_dir: Path, keep: int) -> None:
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old)


# --- the loop ------------------------------------------------------------------------------------

@dataclass
class LoopResult:
    """What a run did: per-step history, evaluations, why it stopped, and how fast it ran."""

    history: list[dict] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)
    steps_done: int = 0
    stop_reason: str = ""
    best_val_loss: float | None = None
    best_step: int | None = None
    train_seconds: float = 0.0
    tokens_trained: int = 0
    last_checkpoint: Path | None = None

    @property
    def final_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_trained / self.train_seconds if self.train_seconds else 0.0

    @property
    def median_step_cpu_seconds(self) -> float:
        """Median CPU time (this process) of one optimizer step. On a machine shared with other
        work, CPU time measures what a step costs; wall time also counts waiting for a core."""
        return statistics.median(h["cpu_seconds"] for h in self.history) if self.history else float("nan")


def train(model: torch.nn.Module, train_blocks: torch.Tensor, val_blocks: torch.Tensor | None,
          config: LoopConfig, *, output_dir: str | Path | None = None,
          resume_from: str | Path | None = None, tracker: Tracker | None = None,
          stop_after: int | None = None, progress: bool = True, desc: str = "training") -> LoopResult:
    """Train ``model`` on packed token blocks for ``config.max_steps`` optimizer steps.

    - ``output_dir``: where ``checkpoint-N`` folders go (every ``save_every`` steps, and when
      the run stops early or is interrupted), and ``best/``, the weights of the best evaluation.
    - ``resume_from``: a checkpoint folder; the run continues exactly where it stopped.
    - ``stop_after``: stop (as if interrupted) after this step, saving a checkpoint first.
    - ``tracker``: receives ``train/loss``, ``train/lr``, ``train/grad_norm`` each step and
      ``eval/loss`` at each evaluation.

    Raises :class:`NonFiniteError` (naming the step) when the loss or gradient norm is NaN/inf.
    """
    from tqdm.auto import tqdm

    if val_blocks is None and (config.eval_every or config.patience):
        raise ValueError("Evaluation or early stopping needs val_blocks; pass them or set "
                         "eval_every=None and patience=None.")
    if output_dir is None and (config.save_every or stop_after):
        raise ValueError("Checkpointing (save_every or stop_after) needs an output_dir.")
    output_dir = Path(output_dir) if output_dir is not None else None
    torch.manual_seed(config.seed)
    optimizer, scheduler = make_optimizer(model, config)
    loop_state = {"step": 0, "epoch": 0, "batches_done": 0, "best_val_loss": None, "best_step": None,
                  "evals_without_improvement": 0, "last_loss": None}
    if resume_from is not None:
        loop_state = load_checkpoint(resume_from, model, optimizer, scheduler)
    stream = BatchStream(make_loader(train_blocks, config.batch_size), config.seed,
                         loop_state["epoch"], loop_state["batches_done"])
    result = LoopResult(best_val_loss=loop_state["best_val_loss"], best_step=loop_state["best_step"])
    tokens_per_step = config.blocks_per_step * train_blocks.shape[1]

    def checkpoint(step: int) -> None:
        loop_state.update(step=step, **stream.position())
        result.last_checkpoint = save_checkpoint(output_dir / f"{CHECKPOINT_PREFIX}{step}", model,
                                                 optimizer, scheduler, dict(loop_state))
        _rotate(output_dir, config.keep_checkpoints)

    model.train()
    start_step = loop_state["step"]
    bar = tqdm(total=config.max_steps, initial=start_step, desc=desc, disable=not progress,
               mininterval=5.0)
    result.stop_reason = f"reached max_steps={config.max_steps}"
    step = start_step
    for step in range(start_step + 1, config.max_steps + 1):
        started, cpu_started = time.perf_counter(), time.process_time()
        micro_batches = [stream.next() for _ in range(config.grad_accum_steps)]
        loss = accumulate_gradients(model, micro_batches, step)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm or math.inf)
        check_finite(grad_norm, "the gradient norm", step,
                     hint="Lower the learning rate or clip harder (max_grad_norm).")
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        result.train_seconds += seconds
        result.tokens_trained += tokens_per_step
        record = {"step": step, "loss": loss, "lr": lr, "grad_norm": float(grad_norm), "seconds": seconds,
                  "cpu_seconds": cpu_seconds}
        result.history.append(record)
        loop_state["last_loss"] = loss
        if tracker is not None:
            tracker.log(step, {"train/loss": loss, "train/lr": lr, "train/grad_norm": float(grad_norm)})
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        stop_early = False
        if config.eval_every and step % config.eval_every == 0:
            val_loss = evaluate(model, val_blocks, config.batch_size, config.eval_batches)
            result.evaluations.append({"step": step, "val_loss": val_loss})
            if tracker is not None:
                tracker.log(step, {"eval/loss": val_loss})
            best = loop_state["best_val_loss"]
            if best is None or val_loss < best - config.min_delta:
                loop_state.update(best_val_loss=val_loss, best_step=step, evals_without_improvement=0)
                if output_dir is not None:
                    save_best_weights(output_dir, model, step, val_loss)
            else:
                loop_state["evals_without_improvement"] += 1
            stop_early = (config.patience is not None
                          and loop_state["evals_without_improvement"] >= config.patience)
        result.best_val_loss, result.best_step = loop_state["best_val_loss"], loop_state["best_step"]
        if stop_early:
            result.stop_reason = (f"early stopping at step {step}: no improvement of the validation "
                                  f"loss for {config.patience} evaluations (best "
                                  f"{loop_state['best_val_loss']:.4f} at step {loop_state['best_step']})")
        elif stop_after is not None and step >= stop_after:
            result.stop_reason = f"interrupted after step {step}"
        if output_dir is not None and (stop_early or result.stop_reason.startswith("interrupted") or
                                       (config.save_every and step % config.save_every == 0)):
            checkpoint(step)
        if stop_early or result.stop_reason.startswith("interrupted"):
            break
    bar.close()
    result.steps_done = step
    return result


# --- memory ----------------------------------------------------------------------------------------

def _llama_shape(model) -> tuple[int, int, int, int]:
    config = model.config
    return (config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.vocab_size)


def estimate_training_memory(model, batch_size: int, block_size: int) -> dict[str, int]:
    """Bytes one AdamW training step of a Llama-style model needs, from shapes alone.

    parameters and gradients: one float each per parameter; AdamW: two (``exp_avg``,
    ``exp_avg_sq``). Activations saved for backward, per token: in each layer
    11 vectors of width ``hidden`` (3 per RMSNorm x 2, q/k/v after rotary, attention output
    and its reshaped copy) and 4 of width ``intermediate`` (gate, up, SiLU(gate), their
    product), then 3 of width ``hidden`` for the final norm and 2 of width ``vocab``
    (logits and log-softmax).
    """
    n_params = sum(p.numel() for p in model.parameters())
    element = next(model.parameters()).element_size()
    layers, hidden, intermediate, vocab = _llama_shape(model)
    tokens = batch_size * block_size
    per_token = layers * (11 * hidden + 4 * intermediate) + 3 * hidden + 2 * vocab
    estimate = {"parameters": n_params * element, "gradients": n_params * element,
                "optimizer states": 2 * n_params * element, "activations": tokens * per_token * element}
    estimate["total"] = sum(estimate.values())
    return estimate


def measure_training_memory(model, batch: torch.Tensor, config: LoopConfig | None = None) -> dict[str, int]:
    """Measure the same four parts on one real AdamW step of ``model`` (trained in place).

    parameters, gradients and optimizer states: bytes of the actual tensors. Activations:
    every tensor autograd saves for backward during the forward pass (a
    ``saved_tensors_hooks`` pack hook; parameters excluded, each storage counted once), plus
    the logits the output holds.
    """
    config = config or LoopConfig()
    optimizer, _ = make_optimizer(model, config)
    parameter_storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes()
                          for p in model.parameters()}
    parameter_bytes = sum(parameter_storages.values())
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    batch = batch.clone()  # a slice would report its parent's whole storage as a saved input
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = model(input_ids=batch, labels=batch)
    activations = sum(saved.values()) + output.logits.untyped_storage().nbytes()
    output.loss.backward()
    del output
    gradients = sum(p.grad.untyped_storage().nbytes() for p in model.parameters() if p.grad is not None)
    optimizer.step()
    states = sum(value.untyped_storage().nbytes() for state in optimizer.state.values()
                 for value in state.values() if torch.is_tensor(value) and value.ndim > 0)
    optimizer.zero_grad(set_to_none=True)
    measured = {"parameters": parameter_bytes, "gradients": gradients,
                "optimizer states": states, "activations": activations}
    measured["total"] = sum(measured.values())
    return measured


def memory_table(estimate: dict[str, int], measured: dict[str, int]) -> list[dict]:
    """Rows ``part / estimated MB / measured MB / measured ÷ estimated`` for display."""
    return [{"part": part, "estimated MB": round(estimate[part] / 1e6, 2),
             "measured MB": round(measured[part] / 1e6, 2),
             "measured / estimated": round(measured[part] / estimate[part], 2)} for part in estimate]


# --- profiler ----------------------------------------------------------------------------------------

def profile_steps(model, blocks: torch.Tensor, config: LoopConfig, steps: int = 3,
                  top: int = 8) -> dict:
    """Run ``steps`` training steps under ``torch.profiler`` (CPU, memory on).

    Returns ``{"ops": rows, "peak_MB": ...}``: the ``top`` operators by self CPU time
    (calls, total ms, share of the profiled time) and the peak memory the steps
    allocated on top of what already existed, summed from the profiler's per-event
    allocations in time order.
    """
    from torch.profiler import ProfilerActivity, profile

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    optimizer, scheduler = make_optimizer(model, config)
    stream = BatchStream(make_loader(blocks, config.batch_size), config.seed)
    model.train()

    def one_step(step: int) -> None:
        accumulate_gradients(model, [stream.next() for _ in range(config.grad_accum_steps)], step)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    one_step(0)  # warm-up: AdamW creates its states on the first step
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        for step in range(1, steps + 1):
            one_step(step)
    averages = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_us = sum(e.self_cpu_time_total for e in averages) or 1.0
    rows = [{"operator": e.key, "calls": e.count, "self CPU ms": round(e.self_cpu_time_total / 1e3, 1),
             "share %": round(100 * e.self_cpu_time_total / total_us, 1)} for e in averages[:top]]
    live = peak = 0
    for event in sorted(profiler.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return {"ops": rows, "peak_MB": round(peak / 1e6, 2), "profiled_ms": round(total_us / 1e3, 1)}


# --- comparison with transformers.Trainer ----------------------------------------------------------

def trainer_run(model, train_blocks: torch.Tensor, config: LoopConfig) -> dict:
    """Train ``model`` with ``transformers.Trainer`` on the same blocks, batch size, steps,
    optimizer settings and warm-up as :func:`train` (no evaluation, no checkpoints).

    Returns ``{"seconds", "median_step_cpu_seconds", "final_loss"}``: the wall time of
    ``trainer.train()`` and the median CPU time from ``on_step_begin`` to ``on_step_end``.
    """
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator
    from transformers.trainer_callback import PrinterCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self._started = time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.process_time() - self._started)

    dataset = Dataset.from_dict({"input_ids": train_blocks.tolist(), "labels": train_blocks.tolist()})
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as folder:
        args = TrainingArguments(
            output_dir=folder, max_steps=config.max_steps, per_device_train_batch_size=config.batch_size,
            gradient_accumulation_steps=config.grad_accum_steps, learning_rate=config.lr,
            warmup_steps=config.warmup_steps, lr_scheduler_type="constant_with_warmup",
            weight_decay=config.weight_decay, adam_beta1=config.adam_betas[0],
            adam_beta2=config.adam_betas[1], max_grad_norm=config.max_grad_norm or 0.0,
            optim="adamw_torch", use_cpu=True, report_to="none", save_strategy="no",
            eval_strategy="no", logging_steps=1, seed=config.seed, data_seed=config.seed,
            dataloader_num_workers=0, disable_tqdm=True, log_level="error")
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator,
                          callbacks=[timer])
        trainer.remove_callback(PrinterCallback)  # disable_tqdm would print every log line instead
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return {"seconds": seconds, "median_step_cpu_seconds": statistics.median(timer.seconds),
            "final_loss": losses[-1]}


def compare_with_trainer(make_model: Callable[[], torch.nn.Module], train_blocks: torch.Tensor,
                         config: LoopConfig) -> list[dict]:
    """Throughput of :func:`train` and of ``transformers.Trainer`` on fresh copies of the same
    model, same data and settings, back to back in this process. One row each.

    ``tokens/CPU-s`` divides the tokens of one step by its median CPU time, so load from other
    processes on a shared machine does not decide the comparison; ``seconds`` is the whole run's
    wall time.
    """
    config = replace(config, eval_every=None, patience=None, save_every=None)
    tokens_per_step = config.blocks_per_step * train_blocks.shape[1]
    ours_started = time.perf_counter()
    ours = train(make_model(), train_blocks, None, config, desc="plain PyTorch loop")
    ours_seconds = time.perf_counter() - ours_started
    theirs = trainer_run(make_model(), train_blocks, config)
    return [{"loop": "plain PyTorch (course_lib.loop.train)", "steps": config.max_steps,
             "seconds": round(ours_seconds, 2),
             "median CPU ms/step": round(1e3 * ours.median_step_cpu_seconds, 1),
             "tokens/CPU-s": round(tokens_per_step / ours.median_step_cpu_seconds),
             "final loss": round(ours.final_loss, 4)},
            {"loop": "transformers.Trainer", "steps": config.max_steps,
             "seconds": round(theirs["seconds"], 2),
             "median CPU ms/step": round(1e3 * theirs["median_step_cpu_seconds"], 1),
             "tokens/CPU-s": round(tokens_per_step / theirs["median_step_cpu_seconds"]),
             "final loss": round(theirs["final_loss"], 4)}]
