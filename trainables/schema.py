"""What a training run emits, by name: its metrics and its artifact files.

Torch-free (standard library only), so the search side (``search/``) and any reader of a run can
import the names without loading the training stack. ``trainables/train.py`` and
``trainables/outputs.py`` produce them; ``search/`` (spec validation, schedulers, the frontier,
tracking, the CLI) reads them from here.
"""

from __future__ import annotations

__all__ = ["ARTIFACTS", "CONFIG_FILE", "DENSE_REFERENCE", "EPOCH_COUNTERPART", "EPOCH_METRICS", "MODEL_FILE",
           "RESULT_FILE", "RESULT_METRICS"]

# ---------------------------------------------------------------- metrics
# Reported every epoch (what an early-stopping scheduler can watch).
EPOCH_METRICS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss", "penalty",
                 "weights_nonzero", "weights_sparsity")
# Numeric keys of result.json that can be objectives (never the test set: the search must not see it).
RESULT_METRICS = EPOCH_METRICS + (
    "params_total", "params_nonzero", "params_compact", "params_unique", "sparsity", "compression_rate",
    "param_sharing", "flops_dense", "flops_compact", "flops_sparse",
)

# The dense network's value of a "min" result metric (its hypervolume reference).
DENSE_REFERENCE = {"params_nonzero": "params_total", "params_unique": "params_total",
                   "params_compact": "params_total",
                   "weights_nonzero": "params_total", "flops_compact": "flops_dense",
                   "flops_sparse": "flops_dense"}

# Final result metric -> the per-epoch metric that stands for it while a trial trains.
#   params_nonzero, params_unique -> weights_nonzero: non-zero entries of the current (uncompacted)
#       weights; at least params_nonzero (compaction only removes more), counted in one pass.
#   sparsity -> weights_sparsity: 1 - weights_nonzero / params_total.
#   flops_compact, flops_sparse -> flops_estimate: per layer, dense FLOPs x live inputs x live
#       outputs (README, "What the numbers mean"); at least flops_compact, in one pass. Compacting
#       the network every epoch would cost as much as a small epoch.
#   params_compact -> params_estimate: every parameter, each Conv2d/Linear weight counted over its
#       live rows x live columns only (trainables.train._Trainer._params_estimate).
# Per-epoch metrics stand for themselves. Result metrics missing here (params_total, flops_dense,
# compression_rate, param_sharing) have no cheap per-epoch value.
EPOCH_COUNTERPART = {
    "val_accuracy": "val_accuracy",
    "val_loss": "val_loss",
    "train_accuracy": "train_accuracy",
    "train_loss": "train_loss",
    "penalty": "penalty",
    "weights_nonzero": "weights_nonzero",
    "weights_sparsity": "weights_sparsity",
    "params_nonzero": "weights_nonzero",
    "params_unique": "weights_nonzero",
    "sparsity": "weights_sparsity",
    "flops_compact": "flops_estimate",
    "flops_sparse": "flops_estimate",
    "params_compact": "params_estimate",
}

# ---------------------------------------------------------------- artifacts of a finished run
CONFIG_FILE = "config.yaml"  # the exact config (TrialConfig.to_yaml); re-runs the trial
RESULT_FILE = "result.json"  # final metrics + per-epoch history
MODEL_FILE = "compact_model.pt"  # the physically compacted network (state_dict + config)
ARTIFACTS = (CONFIG_FILE, RESULT_FILE, MODEL_FILE)
