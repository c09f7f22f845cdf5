"""Evaluation metrics: SG-IoU family, scene-graph extractors, FID, preference win-rates, bootstrap intervals.

``fid`` imports torch and torchmetrics, so its names load on first use (as do ``evaluate`` and ``write_report``, the
runner and report of ``scripts/evaluate.py``); the rest is numpy, pydantic + standard library.
"""
import importlib
from typing import Any

from .extracted_graph import ExtractedGraph, parse_reply, strip_json_fences
from .extractors import (ChatCompletionsExtractor, ExtractorConfigError, GraphParserExtractor, SceneGraphExtractor,
                         TooManyExtractionFailures, Vocabulary, build_prompt, encode_image, extract_all)
from .protocol import EvalProtocol, load_protocol
from .preference import PreferenceSummary, align_scores, summarize_preference, win_rate
from .sg_iou import (GraphSets, IoUScores, SGIoUReport, compare_sg_iou, evaluate_sg_iou, extracted_sets,
                     ground_truth_sets, jaccard, normalize_text, sg_iou_scores)
from .stats import ConfidenceInterval, bootstrap_ci, paired_bootstrap_ci

_FID_NAMES = ("FIDFeatures", "FIDResult", "ImageEncoderFeatures", "InceptionV3Features", "PairedFID", "compute_fid",
              "extract_features", "fid_bootstrap", "fid_from_features", "fid_metric", "fid_paired",
              "inception_fid_features")

__all__ = [
    "ExtractedGraph", "parse_reply", "strip_json_fences", "ChatCompletionsExtractor", "ExtractorConfigError",
    "TooManyExtractionFailures",
    "GraphParserExtractor", "SceneGraphExtractor", "Vocabulary", "build_prompt", "encode_image", "extract_all", "PreferenceSummary", "align_scores",
    "summarize_preference", "win_rate", "GraphSets", "IoUScores", "SGIoUReport", "compare_sg_iou", "evaluate_sg_iou",
    "extracted_sets", "ground_truth_sets", "jaccard", "normalize_text", "sg_iou_scores", "ConfidenceInterval",
    "bootstrap_ci", "paired_bootstrap_ci", "EvalProtocol", "load_protocol", "evaluate", "write_report", *_FID_NAMES,
]
_LAZY = {"evaluate": ("run", "evaluate"), "write_report": ("report", "write_report")}  # import torch / matplotlib


def __getattr__(name: str) -> Any:
    if name in _FID_NAMES:
        from . import fid  # heavy (torch, torchmetrics): loaded on first use

        return getattr(fid, name)
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    raise AttributeError(f"module 'sgalign.evaluation' has no attribute {name!r}")
