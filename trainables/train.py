"""One training run as a pure function of its config: ``fit(cfg, report=None) -> Result``.

(Over 400 lines on purpose: the loop, its checkpoints and its final measurement share the
trainer's state; each concern it calls — prox, regularizers, targets, tying, metrics, compaction —
is its own module.)

The loop is plain proximal SGD (the papers' algorithm): a gradient step on the data loss (plus
``optim.weight_decay``, the papers' "+l2"), then, in one place, the regularizer's proximal step on
every regularized layer with step = the current learning rate, after every optimizer step or once
per epoch (``regularizer.prox_every``). With momentum or Adam the same convention is used (step =
lr), as the official GrOWL code does with momentum. Groups that the prox zeroes can be masked
permanently (``regularizer.mask_pruned``). A pruning family (``magnitude``, ``channel_magnitude``:
a :class:`~trainables.regularizers.Pruner`) has no prox: in the same place it updates masks on its
schedule, which are multiplied into the weights after every step. With ``tying.enabled`` a second phase clusters rows
(``trainables.tying``) and retrains with clustered rows tied, without the prox.

With ``optim.amp`` (``bf16`` or ``fp16``) the forward pass and the loss run under
``torch.autocast`` on the run's device, with a gradient scaler for ``fp16`` (whose state is in the
checkpoint); the parameters, the optimizer, the prox and the masks stay float32, and evaluation
runs in float32. Networks with convolutions use the ``channels_last`` memory format on a GPU.
``fit(..., threads=N)`` runs with N torch threads (``torch.set_num_threads``) and restores the
previous count afterwards.

Sparsity paths (``cfg.path``): the run is ``len(path.targets)`` stages of ``path.epochs``
regularized epochs and ``path.finetune_epochs`` of fine-tuning. Stage ``k`` starts with a fresh
optimizer and schedule; a proximal family's target controller goes from target ``k-1`` to
target ``k`` (cubic, its per-layer strengths carried over), a pruner's window from ``initial =
target k-1`` to ``final = target k`` over the stage. Fine-tuning masks every zero of the
regularized layers, runs without the prox at ``path.finetune_lr`` (tying, if on, starts here);
then the point is measured as a finished run (``Result`` with ``point``, ``target``, its config
``cfg.at_point(k)``). With ``continue_from: stage`` the next stage starts from the weights
before fine-tuning (kept in the checkpoint), else from the fine-tuned point. Points never depend
on the targets after them, so ``fit(cfg.at_point(k))`` re-runs to exactly point ``k``.

``report(epoch)`` is called after every epoch with an :class:`EpochReport`: its ``metrics``,
``state()`` (everything needed to resume with ``fit(cfg, resume=state)``, as plain tensors and
Python values, loadable with ``torch.load(weights_only=True)``) and, on the last epoch only,
``result``: the finished :class:`Result`, whose final metrics (test accuracy, parameter and FLOP
counts of the compacted network) are also merged into that epoch's ``metrics``.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .channels import following_norms, silence_filters, trace
from .compact import CompactionError, compact, uncompacted
from .config import ConfigError, TrialConfig
from .data import Dataset, DataSpec, Split, StreamSplit, batches, load
from .groups import conv_groups, from_groups
from .metrics import at_chance, count_flops, model_metrics
from .models import build_model, prunable_layers
from .regularizers import ChannelLayerRegularizer, LayerRegularizer, Pruner, build_layer_regularizers
from .target import build_target
from .tying import ZERO_ROW_NORM, LayerTying, find_ties, tie_

__all__ = ["fit", "Result", "EpochReport", "TrainingDiverged", "evaluate", "resolve_device", "check_device",
           "STATE_FORMAT"]

STATE_FORMAT = 1


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite (typically a step size or strength far too large)."""


@dataclass
class Result:
    """What one run produced. ``metrics`` is the content of ``result.json``."""

    config: TrialConfig
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    model: nn.Module  # the trained network (pruned weights are zeros)
    compact_model: nn.Module  # the physically smaller network with the same outputs
    spec: DataSpec
    ties: list[LayerTying] = field(default_factory=list)
    preprocessing: dict[str, Any] = field(default_factory=dict)  # Dataset.preprocessing, for inference


@dataclass
class EpochReport:
    """What ``fit`` tells its ``report`` callback after each epoch."""

    metrics: dict[str, Any]
    state: Callable[[], dict[str, Any]]  # a resumable checkpoint, computed only when called
    # the finished run on the last epoch; on a sparsity path also each point's run at its epoch
    # (its ``model`` is the live network: save it during the callback)
    result: Result | None = None
    final: bool = False  # the run's last epoch


ReportFn = Callable[[EpochReport], None]


def resolve_device(device: str) -> torch.device:
    """The torch device of a config's ``device``; a CUDA device this machine lacks is a
    ``ConfigError`` naming ``device`` and the value (``cuda:1`` on a one-GPU machine would
    otherwise fail deep inside the first ``.to``)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError([("device", "CUDA is not available on this machine", device)])
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError([("device", f"this machine has {count} CUDA device(s): cuda:0 to cuda:{count - 1}",
                                device)])
    return dev


def check_device(cfg: TrialConfig) -> torch.device:
    """Check, before any work, that this machine can run ``cfg``'s device and mixed precision,
    and return the device: a ``ConfigError`` naming ``device`` or ``optim.amp`` otherwise."""
    dev = resolve_device(cfg.device)
    if cfg.optim.amp == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError([("optim.amp", f"{torch.cuda.get_device_name(dev)} has no bfloat16: use fp16", "bf16")])
    return dev


AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def uses_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Convolutional networks on a GPU run in ``channels_last`` (NHWC), which the GPU's
    convolution kernels (tensor cores under mixed precision) prefer; on the CPU the default
    layout is kept."""
    return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the block (nothing when ``None``), then the
    previous count again."""
    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got threads={threads!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def evaluate(model: nn.Module, split: Split | StreamSplit, batch_size: int = 1024) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) on ``split``, and ``chance``: the
    accuracy of always predicting the split's most frequent class."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=split.device)
    correct = torch.zeros((), dtype=torch.int64, device=split.device)
    counts = None
    for xb, yb in batches(split, batch_size, shuffle=False):
        out = model(xb)
        loss += F.cross_entropy(out, yb, reduction="sum").double()
        correct += (out.argmax(1) == yb).sum()
        seen = torch.bincount(yb, minlength=out.shape[1])
        counts = seen if counts is None else counts + seen
    model.train(was_training)
    n = max(len(split), 1)
    return {"loss": loss.item() / n, "accuracy": correct.item() / n, "chance": counts.max().item() / n if counts is not None else 0.0}


def _seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _make_optimizer(cfg: TrialConfig, params, lr: float) -> torch.optim.Optimizer:
    return cfg.optim.optimizer.build(params, lr=lr, weight_decay=cfg.optim.weight_decay)


def _make_scheduler(cfg: TrialConfig, opt: torch.optim.Optimizer, epochs: int | None = None):
    return cfg.optim.schedule.build(opt, epochs=cfg.optim.epochs if epochs is None else epochs)


class _Trainer:
    def __init__(self, cfg: TrialConfig):
        self.cfg = cfg
        self.device = check_device(cfg)
        self.generator = _seed_everything(cfg.seed)
        self.data: Dataset = load(cfg.data, self.device)
        self.model = build_model(cfg.model, self.data.spec).to(self.device)
        if uses_channels_last(self.model, self.device):
            self.model = self.model.to(memory_format=torch.channels_last)
        self.amp_dtype = AMP_DTYPES[cfg.optim.amp]
        # fp16 needs loss scaling (its range underflows small gradients); bf16 has float32's range
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.optim.amp == "fp16" else None
        self.layers: list[LayerRegularizer] = build_layer_regularizers(cfg.regularizer, self.model,
                                                                       self.data.spec.input_shape,
                                                                       tying=cfg.tying.enabled)
        # groups: filter -> a dead filter also silences its bias and following norm channel
        self.norms_after: dict[str, list[nn.Module]] = {}
        if cfg.regularizer.groups == "filter" and self.layers and cfg.regularizer.sparsifying:
            try:
                after = following_norms(trace(self.model, self.data.spec.input_shape), [l.module for l in self.layers])
                self.norms_after = {l.name: after[l.module] for l in self.layers}
            except Exception as e:  # noqa: BLE001 - an untraceable model: weights are still masked
                warnings.warn(f"groups: filter: cannot trace {type(self.model).__name__} to find the norm "
                              f"layers after its filters ({type(e).__name__}: {e}); a zeroed filter's bias "
                              "and norm channel are not zeroed", stacklevel=2)
        self.path = cfg.path  # a sparsity path: stages, each ending in a point
        self.optimizer = _make_optimizer(cfg, self.model.parameters(), cfg.optim.lr)
        self.scheduler = _make_scheduler(cfg, self.optimizer, self.path.epochs if self.path else None)
        self.masks: dict[str, torch.Tensor] = {}  # element masks of layers with dead groups
        self.dead: dict[str, torch.Tensor] = {}  # per layer: which groups are pruned for good
        self.ties: list[LayerTying] | None = None
        self.epoch = 0  # epochs completed, training and retraining phases counted together
        self.history: list[dict[str, Any]] = []
        # regularized epochs (on a path: of each stage), and all of them
        self.train_epochs = cfg.optim.epochs if self.path is None else self.path.epochs
        self.total_epochs = cfg.total_epochs
        self.begun: tuple[int, str] | None = None  # the path segment the trainer is set up for
        self.snapshot: dict[str, Any] | None = None  # continue_from: stage, the weights before fine-tuning
        self.points: list[dict[str, Any]] = []  # each measured point's scalar metrics
        self.uses_prox = cfg.regularizer.name != "none"
        first = self.layers[0].regularizer if self.layers else None
        self.pruner: Pruner | None = first if isinstance(first, Pruner) else None  # masks on a schedule
        self.steps_per_epoch = math.ceil(len(self.data.train) / cfg.optim.batch_size)
        self._dense_flops: list[tuple[nn.Module, int]] | None = None  # for _flops_estimate
        self.val_chance: float | None = None  # the validation split's most-frequent-class accuracy
        self.val_accuracy: float | None = None  # at the last epoch
        # regularizer.target_sparsity: the prox's strength adapted to reach it (trainables.target)
        self.target = build_target(cfg, self.layers if self.uses_prox and self.pruner is None else [],
                                   total_steps=self.train_epochs * self.steps_per_epoch,
                                   steps_per_epoch=self.steps_per_epoch)

    # -- the proximal step, masks and tying ----------------------------------------------------

    @torch.no_grad()
    def _prox(self, lr: float, step: int) -> None:
        """The regularizer's step after optimizer step number ``step`` (the prox, step size ``lr``)."""
        if self.pruner is not None:  # gradual pruning: new masks on the pruner's schedule
            rows = self.pruner.structured and self.layers[0].grouping == "channel"
            keep = self.pruner.prune([layer.groups() if rows else layer.module.weight for layer in self.layers],
                                     [self.masks.get(layer.name) for layer in self.layers],
                                     step=step, steps_per_epoch=self.steps_per_epoch,
                                     conv_groups=[conv_groups(layer.module) for layer in self.layers])
            for layer, mask in zip(self.layers, keep or []):
                self.masks[layer.name] = mask.to(layer.module.weight.dtype).contiguous()
            return
        if self.target is not None:
            # the optimizer step moved masked groups off zero: zero them first, or the controller
            # counts them live, lowers the strength, and the masks then add them back to its zeros
            self._apply_masks()
            self.target.apply(lr, step)
        else:
            for layer in self.layers:
                layer.apply_update(lr=lr, step=step, epoch=self.epoch)
        if getattr(self.cfg.regularizer, "mask_pruned", False):  # sparsifying families declare it
            self._update_masks()

    @torch.no_grad()
    def _update_masks(self) -> None:
        """Groups whose norm fell to float32 epsilon are zeroed and stay zero (``mask_pruned``).

        Only whole groups are masked (a zero inside a live group may come back). The element
        mask is rebuilt only when a layer's set of dead groups grows, and layers without dead
        groups are never touched (bench/train_overhead.py)."""
        for layer in self.layers:
            G = layer.groups()
            dead = torch.linalg.vector_norm(G, dim=1) <= ZERO_ROW_NORM
            previous = self.dead.get(layer.name)
            if previous is not None:
                dead |= previous
            elif not dead.any():
                continue
            if previous is None or not torch.equal(dead, previous):
                self.dead[layer.name] = dead
                if isinstance(layer, ChannelLayerRegularizer):
                    self.masks[layer.name] = (~dead).to(G.dtype)  # rows, applied by zero()
                    self._apply_mask(layer)
                    continue
                W = layer.module.weight
                keep = (~dead).to(W.dtype).unsqueeze(1).expand_as(G)
                self.masks[layer.name] = from_groups(keep, W.shape, layer.grouping, conv_groups(layer.module)).contiguous()
            self._apply_mask(layer)

    def _apply_mask(self, layer: LayerRegularizer) -> None:
        if isinstance(layer, ChannelLayerRegularizer):  # every parameter of the dead channels
            layer.zero(self.masks[layer.name].reshape(self.masks[layer.name].shape[0], -1).eq(0).all(1))
            return
        layer.module.weight.mul_(self.masks[layer.name])
        if layer.name in self.norms_after:  # groups: filter
            mask = self.masks[layer.name]
            silence_filters(layer.module, self.norms_after[layer.name], ~mask.reshape(mask.shape[0], -1).ne(0).any(1))

    @torch.no_grad()
    def _apply_masks(self) -> None:
        for layer in self.layers:
            if layer.name in self.masks:
                self._apply_mask(layer)

    @torch.no_grad()
    def _tie(self) -> None:
        modules = dict(self.model.named_modules())
        for tying in self.ties or []:
            tie_(modules[tying.name], tying)

    def _start_tying(self, lr: float | None = None) -> None:
        t = self.cfg.tying
        self.ties = find_ties([(l.name, l.module, l.grouping) for l in self.layers],
                              preference=t.preference, damping=t.damping,
                              max_cluster_ratio=t.max_cluster_ratio, max_iter=t.max_iter,
                              convergence_iter=t.convergence_iter, retries=t.retries, fallback=t.fallback)
        self._tie()
        # retraining: same optimizer family, constant learning rate, no prox (GrOWL §4)
        self.optimizer = _make_optimizer(self.cfg, self.model.parameters(), t.retrain_lr if lr is None else lr)
        self.scheduler = None

    # -- sparsity paths ---------------------------------------------------------------------------

    def _segment(self, epoch: int) -> tuple[int, str]:
        """``(stage, phase)`` of epoch number ``epoch`` (from 0): ``train`` (regularized), then
        ``retrain`` (tying) or, on a path, ``finetune``."""
        if self.path is None:
            return 0, "train" if epoch < self.train_epochs else "retrain"
        stage, within = divmod(epoch, self.path.stage_epochs)
        return stage, "train" if within < self.path.epochs else "finetune"

    def _stage_start(self, stage: int) -> int:
        return stage * self.path.stage_epochs if self.path is not None else 0

    def _begin(self, stage: int, phase: str, fresh: bool = True) -> None:
        """Set the trainer up for a path segment: a stage's regularized epochs (a fresh optimizer
        and schedule, the target controller or the pruner's window from the previous target to this
        one) or its fine-tuning (zeros masked, a fresh optimizer at ``finetune_lr``, tying). ``fresh``:
        the segment starts now (else a checkpoint taken inside it is being loaded)."""
        path, cfg = self.path, self.cfg
        if phase == "train":
            if fresh and stage > 0:  # after a point: where the next stage continues from
                if self.snapshot is not None:
                    self._restore(self.snapshot)
                    self.snapshot = None
                self.ties = None
            self.optimizer = _make_optimizer(cfg, self.model.parameters(), cfg.optim.lr)
            self.scheduler = _make_scheduler(cfg, self.optimizer, path.epochs)
            if self.pruner is not None:  # Zhu & Gupta's window over this stage, from the last target
                for layer in self.layers:
                    reg = layer.regularizer
                    reg.initial = path.targets[stage - 1] if stage else 0.0
                    reg.final, reg.start_epoch, reg.end_epoch = path.targets[stage], 0, path.epochs
            elif self.uses_prox:
                self.target = build_target(cfg, self.layers, total_steps=path.epochs * self.steps_per_epoch,
                                           steps_per_epoch=self.steps_per_epoch, stage=stage,
                                           previous=self.target if fresh else None)
        else:
            if fresh:
                self._fix_masks()
                if path.continue_from == "stage":
                    self.snapshot = self._snapshot()
            if cfg.tying.enabled and fresh:
                self._start_tying(lr=path.finetune_lr)
            else:
                self.optimizer = _make_optimizer(cfg, self.model.parameters(), path.finetune_lr)
                self.scheduler = None
        self.begun = (stage, phase)

    @torch.no_grad()
    def _fix_masks(self) -> None:
        """Before fine-tuning: every zero of a regularized layer stays zero (a pruner's masks already do)."""
        if self.pruner is not None:
            return
        self._update_masks()  # whole dead groups (channel groups: every parameter of the channel)
        for layer in self.layers:
            if not isinstance(layer, ChannelLayerRegularizer):
                W = layer.module.weight
                self.masks[layer.name] = W.ne(0).to(W.dtype).contiguous()
        self._apply_masks()

    def _snapshot(self) -> dict[str, Any]:
        return {"model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "masks": {k: v.clone() for k, v in self.masks.items()}}

    @torch.no_grad()
    def _restore(self, snapshot: dict[str, Any]) -> None:
        self.model.load_state_dict(snapshot["model"])
        self.masks = {k: v.to(self.device) for k, v in snapshot["masks"].items()}
        self.dead = {}  # found again from the zeros by the next _update_masks

    def _point(self, stage: int, last_epoch: dict[str, Any]) -> Result:
        """Measure the path's point ``stage``: a run's whole result, with the config that re-runs
        to exactly this point (the path truncated after it)."""
        final, small = self._finalize()
        metrics = {**last_epoch, **final, "regularizer": self.cfg.regularizer.name, "point": stage,
                   "target": self.path.targets[stage]}
        summary = {k: v for k, v in metrics.items()
                   if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        self.points[stage:] = [summary]  # measured again after a resume at the last epoch
        metrics["points"] = [dict(p) for p in self.points]
        return Result(self.cfg.at_point(stage), metrics, list(self.history), self.model, small, self.data.spec,
                      list(self.ties or []), self.data.preprocessing)

    # -- one epoch ------------------------------------------------------------------------------

    def _train_epoch(self) -> dict[str, float]:
        cfg = self.cfg
        stage, phase = self._segment(self.epoch)
        retrain = phase != "train"
        prox_step = self.uses_prox and not retrain and cfg.regularizer.prox_every == "step"
        tie_step = retrain and self.ties is not None and cfg.tying.every == "step"
        lr = self.optimizer.param_groups[0]["lr"]
        self.model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        step = (self.epoch - self._stage_start(stage)) * self.steps_per_epoch  # steps so far (in this stage)
        for xb, yb in batches(self.data.train, cfg.optim.batch_size, shuffle=True,
                              generator=self.generator, augment=self.data.augment):
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                out = self.model(xb)
                loss = F.cross_entropy(out, yb)  # float32 under autocast
            self.optimizer.zero_grad(set_to_none=True)
            stepped = self._backward_step(loss)
            if prox_step and stepped:
                self._prox(lr, step)
            step += 1
            self._apply_masks()
            if tie_step:
                self._tie()
            loss_sum += loss.detach().double() * len(yb)
            correct += (out.detach().argmax(1) == yb).sum()
        if self.uses_prox and not retrain and cfg.regularizer.prox_every == "epoch":
            self._prox(lr, step - 1)
            self._apply_masks()
        if retrain and self.ties is not None and cfg.tying.every == "epoch":
            self._tie()
        if self.scheduler is not None and not retrain:
            self.scheduler.step()
        n = len(self.data.train)
        train_loss = loss_sum.item() / n
        if not math.isfinite(train_loss):
            raise TrainingDiverged(
                f"non-finite training loss ({train_loss}) at epoch {self.epoch + 1} with regularizer "
                f"{cfg.regularizer.name!r}: lower the learning rate ({lr:g}) or the regularization strength"
            )
        return {"lr": lr, "train_loss": train_loss, "train_accuracy": correct.item() / n}

    def _backward_step(self, loss: torch.Tensor) -> bool:
        """Backward and optimizer step; False when the fp16 gradient scaler skipped the step
        (inf/NaN gradients: it lowers the scale instead), so that no prox follows a step that
        was not taken."""
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale

    def _epoch_metrics(self, train: dict[str, float], seconds: float) -> dict[str, Any]:
        stage, phase = self._segment(self.epoch - 1)
        m: dict[str, Any] = {"epoch": self.epoch, "phase": phase, **train}
        if self.path is not None:
            m["stage"] = stage
        if len(self.data.val):
            val = evaluate(self.model, self.data.val)
            m["val_loss"], m["val_accuracy"] = val["loss"], val["accuracy"]
            self.val_chance, self.val_accuracy = val["chance"], val["accuracy"]
        with torch.no_grad():
            m["penalty"] = float(sum(layer.penalty().item() for layer in self.layers))
        params = [p for p in self.model.parameters()]
        nonzero = sum(int(torch.count_nonzero(p)) for p in params)
        total = sum(p.numel() for p in params)
        m["weights_nonzero"], m["weights_sparsity"] = nonzero, 1 - nonzero / total
        m["flops_estimate"], m["params_estimate"] = self._flops_estimate(), self._params_estimate(total)
        if self.target is not None and phase == "train":
            m.update(self.target.epoch_metrics())
        m["epoch_time_s"] = seconds
        return m

    @torch.no_grad()
    def _flops_estimate(self) -> float:
        """A per-epoch stand-in for ``flops_compact`` that costs one pass over the weights
        (compacting every epoch can cost as much as a small epoch): each Conv2d/Linear layer's
        dense FLOPs x its fraction of live inputs x its fraction of live outputs, where an input
        (output) is live when its column (row) of the layer's weight is not all zero. It reads
        each layer alone, so units kept alive in one layer but unused by the next still count:
        it is at least ``flops_compact`` for a chain of layers, and the exact figure comes at the end."""
        if self._dense_flops is None:  # one batch-1 forward, once per run
            by_name = count_flops(self.model, self.data.spec.input_shape)[1]
            self._dense_flops = [(m, by_name.get(name, 0)) for name, m in prunable_layers(self.model)]
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for module, flops in self._dense_flops:
            live = module.weight.ne(0)
            live = live.flatten(2).any(2) if live.ndim > 2 else live  # [outputs, inputs]
            total += flops * live.any(1).double().mean() * live.any(0).double().mean()
        return total.item()

    @torch.no_grad()
    def _params_estimate(self, total: int) -> float:
        """A per-epoch stand-in for ``params_compact`` read the same way as ``_flops_estimate``:
        every parameter counts, except that each Conv2d/Linear layer's weight counts only its live
        rows x live columns (and its bias its live rows). Compaction also drops the norm entries of
        removed channels and keeps a channel that a consumer still reads, so the two differ a little;
        the exact figure comes at the end."""
        estimate = float(total)
        for _, module in prunable_layers(self.model):
            live = module.weight.ne(0)
            live = live.flatten(2).any(2) if live.ndim > 2 else live  # [outputs, inputs]
            rows, cols = live.any(1).double().mean().item(), live.any(0).double().mean().item()
            estimate -= module.weight.numel() * (1 - rows * cols)
            if getattr(module, "bias", None) is not None:
                estimate -= module.bias.numel() * (1 - rows)
        return estimate

    def _finalize(self) -> tuple[dict[str, Any], nn.Module]:
        if self.cfg.tying.enabled and self.ties is None:  # tying with no retraining epochs
            self._start_tying()
        self.model.eval()
        shape = self.data.spec.input_shape
        try:  # the same checks as trainables.compact.check_compactable, which validation runs first
            small, compaction = compact(self.model, shape), "graph"
        except CompactionError as e:  # never fail a finished run: measure the dense network instead
            warnings.warn(f"{type(self.model).__name__} is not compacted (compaction: none; flops_compact "
                          f"= flops_dense): {e}", stacklevel=2)
            small, compaction = uncompacted(self.model), "none"
        groupings = {layer.name: layer.grouping for layer in self.layers}
        final = model_metrics(self.model, small, shape, groupings=groupings)
        final["compaction"] = compaction
        test = evaluate(self.model, self.data.test)
        # chance: the most frequent class's share; *_at_chance (0/1): no better than that
        final = {"test_accuracy": test["accuracy"], "test_loss": test["loss"], "chance_accuracy": test["chance"],
                 "test_at_chance": int(at_chance(test["accuracy"], test["chance"], len(self.data.test))), **final}
        if self.val_chance is not None:  # what a search's accuracy objective is compared with
            final["val_chance_accuracy"] = self.val_chance
            final["val_at_chance"] = int(at_chance(self.val_accuracy, self.val_chance, len(self.data.val)))
        regs = {layer.name: layer.regularizer for layer in self.layers}
        for info in final.get("layers", []):
            reg = regs.get(info["name"])
            info["regularized"] = reg is not None and self.uses_prox
            if reg is not None:
                info["regularizer"] = {p: getattr(reg, p) for p in reg.params}
        if self.target is not None:
            final.update(self.target.final_metrics(final.get("layers", [])))
        if self.ties is not None:
            final["tying"] = [t.summary() for t in self.ties]
            # numbers, so the tracker logs them: a search shows where tying silently did nothing
            final["tying_layers"] = len(self.ties)
            final["tying_converged_layers"] = sum(t.converged for t in self.ties)
            final["tying_fallback_rows"] = sum(t.fallback_rows for t in self.ties)
        return final, small

    # -- checkpoints ------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "masks": dict(self.masks),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ties": [t.to_state() for t in self.ties] if self.ties is not None else None,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "history": [dict(h) for h in self.history],
            **({"target": self.target.state()} if self.target is not None else {}),
            **({"snapshot": self.snapshot, "points": [dict(p) for p in self.points]} if self.path is not None else {}),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported checkpoint format {state.get('format')!r} (expected {STATE_FORMAT})")
        if state["config"] != self.cfg.to_dict():
            raise ValueError("the checkpoint was written by a run with a different config")
        self.model.load_state_dict(state["model"])
        epoch = int(state["epoch"])
        if state["ties"] is not None:
            self.ties = [LayerTying.from_state(t) for t in state["ties"]]
            if self.path is None:
                self.optimizer = _make_optimizer(self.cfg, self.model.parameters(), self.cfg.tying.retrain_lr)
                self.scheduler = None
        if self.path is not None and epoch > 0:  # set up as in the segment the checkpoint was taken in
            self._begin(*self._segment(epoch - 1), fresh=False)
            self.snapshot = state.get("snapshot")
            self.points = [dict(p) for p in state.get("points", [])]
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.masks = {k: v.to(self.device) for k, v in state["masks"].items()}
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        # self.dead is not saved: masked groups are exactly zero, so the next _update_masks finds them again
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.epoch = epoch
        self.history = list(state["history"])
        if self.target is not None:
            self.target.load_state(state.get("target"))

    # -- the run ----------------------------------------------------------------------------------

    def run(self, report: ReportFn | None) -> Result:
        if self.epoch == self.total_epochs and self.history:
            # resumed from the last epoch's checkpoint: finish, and report that epoch again
            result = self._result(self.history[-1])
            if report is not None:
                report(EpochReport({**self.history[-1], **result.metrics}, self.state, result, final=True))
            return result
        if self.total_epochs == 0:  # optim.epochs 0: the network as given, measured like a trained one
            return self._evaluate_only(report)
        result = None
        while self.epoch < self.total_epochs:
            segment = self._segment(self.epoch)
            if self.path is not None and segment != self.begun:
                self._begin(*segment)
            elif self.path is None and segment[1] == "retrain" and self.cfg.tying.enabled and self.ties is None:
                self._start_tying()
            start = time.perf_counter()
            train = self._train_epoch()
            self.epoch += 1
            metrics = self._epoch_metrics(train, time.perf_counter() - start)
            self.history.append(metrics)
            result = None
            if self.path is not None and self.epoch % self.path.stage_epochs == 0:  # a point
                result = self._point(segment[0], metrics)
            elif self.epoch == self.total_epochs:
                result = self._result(metrics)
            if result is not None:
                metrics = {**metrics, **result.metrics}
            if report is not None:
                report(EpochReport(metrics, self.state, result, final=self.epoch == self.total_epochs))
        return result

    def _evaluate_only(self, report: ReportFn | None) -> Result:
        """``optim.epochs: 0``: no step; the training split is evaluated (its loss and accuracy as
        the ``train_*`` metrics), then everything a trained run reports, at epoch 0."""
        start = time.perf_counter()
        train = evaluate(self.model, self.data.train)
        lr = self.optimizer.param_groups[0]["lr"]
        metrics = self._epoch_metrics({"lr": lr, "train_loss": train["loss"], "train_accuracy": train["accuracy"]},
                                      time.perf_counter() - start)
        metrics["phase"] = "evaluate"
        self.history.append(metrics)
        result = self._result(metrics)
        if report is not None:
            report(EpochReport({**metrics, **result.metrics}, self.state, result, final=True))
        return result

    def _result(self, last_epoch: dict[str, Any]) -> Result:
        if self.path is not None:  # the last point
            return self._point(len(self.path.targets) - 1, last_epoch)
        final, small = self._finalize()
        metrics = {**last_epoch, **final, "regularizer": self.cfg.regularizer.name}
        return Result(self.cfg, metrics, self.history, self.model, small, self.data.spec, self.ties or [],
                      self.data.preprocessing)


def fit(cfg: TrialConfig, report: ReportFn | None = None, *, resume: dict[str, Any] | None = None,
        threads: int | None = None) -> Result:
    """Train one network as ``cfg`` says; see the module docstring for the loop and ``report``.

    ``threads``: torch's intra-op threads for this run (default: leave the process's setting).
    It is not part of the config: it is a property of where the run is placed (a search gives each
    trial its ``resources.cpu``), and it changes the speed, at most the rounding of parallel sums."""
    with torch_threads(threads):
        trainer = _Trainer(cfg)
        if resume is not None:
            trainer.load_state(resume)
        return trainer.run(report)
