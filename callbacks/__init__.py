"""Lightning callbacks for RL recipes: sample tables, metric plots, held-out evaluation, adapter saving,
a step progress bar."""

from __future__ import annotations

from callbacks.adapter_checkpoint import AdapterCheckpoint
from callbacks.evaluation import HeldOutEval
from callbacks.hybrid_accuracy import HybridAccuracy
from callbacks.metrics_plot import MetricsPlot
from callbacks.preemption import SaveOnPreemption
from callbacks.progress import StepProgressBar
from callbacks.samples import SampleTable

__all__ = ["AdapterCheckpoint", "HeldOutEval", "HybridAccuracy", "MetricsPlot", "SampleTable", "SaveOnPreemption",
           "StepProgressBar"]
