"""Layout supervision of an SG encoder: sg2im's box regression, as a pre-training stage and an auxiliary loss.

Why: trained by epsilon-MSE alone, the SG encoder turns into a constant (docs/RESULTS.md, "An SG encoder that
carries its graph"): at first its residual is noise on the phrase tokens and a predicate lowers the loss little, so
flattening the residual is the cheapest way down. sg2im, whose graph convolution LAION-SG's encoder is, trains the
same stack to predict each object's box. A linear head on the encoder's unit-norm node features
(``SGEncoder.graph_features``) regressing the object's box centre makes every object output say where that object
goes,
which is what a predicate changes, before any epsilon-MSE step; kept as an auxiliary loss while the UNet trains, it
stops the collapse. The head is a training tool: it is saved beside the encoder, never inside its state dict, so
the encoder's keys stay LAION-SG's.

Targets are the box centres ``(cx, cy) / canvas`` per object (the boxes of a graph are given per item id): the
centre is what a predicate changes; the size is in the phrase already and would dominate a full-box loss.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..scene_graph import SceneGraph
from .graph_inputs import GraphInputs
from .sg_encoder import SGEncoder


class LayoutHead(nn.Module):
    """Linear map of a node's unit-norm graph feature to its normalised box centre (cx, cy)."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(embed_dim, 2)
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, 0.5)  # the canvas centre: the loss starts at the boxes' spread

    def forward(self, feats: Tensor) -> Tensor:
        return self.linear(feats)


def node_boxes(graphs: Sequence[SceneGraph], boxes: Sequence[Mapping[int, Sequence[float]]],
               canvas: float) -> Tensor:
    """(N, 2) centre targets in ``build_graph_inputs(graphs, "object")``'s node order: per graph its items in
    ``to_pyg().item_ids`` order; ``boxes[b][item_id] = (x0, y0, x1, y1)`` in pixels of a ``canvas``-wide image."""
    rows = []
    for b, (sg, bx) in enumerate(zip(graphs, boxes)):
        for item_id in sg.to_pyg().item_ids:
            if int(item_id) not in bx:
                raise KeyError(f"graph {b}: no box for item {int(item_id)}")
            x0, y0, x1, y1 = (float(v) for v in bx[int(item_id)])
            rows.append([(x0 + x1) / 2, (y0 + y1) / 2])
    return torch.tensor(rows, dtype=torch.float32) / canvas


def layout_loss(encoder: SGEncoder, head: LayoutHead, gi: GraphInputs, targets: Tensor) -> Tensor:
    """Mean squared error of the head's boxes from the encoder's node features (object mode inputs ``gi``)."""
    feats, _ = encoder.graph_features(gi.x.to(encoder.dtype), gi.pred.to(encoder.dtype), gi.edge_index)
    if feats.shape[0] != targets.shape[0]:
        raise ValueError(f"layout_loss: {feats.shape[0]} nodes but {targets.shape[0]} box targets")
    return F.mse_loss(head(feats).float(), targets.to(feats.device))
