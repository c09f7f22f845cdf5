"""The scene-graph encoder of SD1.5-SG / SDXL-SG: projections + sg2im GCN + gated residual, as LAION-SG builds it.

Tensor path (reference anchor-laion-sg.md §2.1, §2.6), for node vectors ``x (N, text_dim)``, predicate vectors
``pred (T, text_dim)`` taken from the text encoder(s), and ``edge_index (2, T)``:

    projection_mlp_1 (bias-free, text_dim -> embed_dim) on x and pred
    graph_conv (one GraphTripleConv) then graph_net (``num_graph_layers`` more): 1 + 5 layers by default
    L2-normalise every row, then projection_mlp_2 (bias-free, embed_dim -> text_dim)

The outputs are added, gated by the scalar ``alpha_obj`` (initialised to 0), to the text encoder's hidden states
at the positions of the graph's tokens in the serialised-graph text (see ``conditioning.py``).

Two graph modes share these weights (``mode`` in the config; the graph inputs are built in ``graph_inputs.py``):

==================  ==========================================  ============================================
                    ``faithful`` (LAION-SG SDXL-SG)             ``object`` (corrected default)
==================  ==========================================  ============================================
node                one CLIP token of a triple's phrase         one item, shared by all its relations
node feature        the token's hidden state (phrase alone)     mean hidden state of the item's phrase tokens
edges               "-" edges attribute token -> head token,    one edge per relation (subject -> object),
                    one parallel head->head edge per relation   plus a self-loop per item with the "-"
                    token                                       predicate
isolated items      not in the graph (text only)                nodes; their tokens get a residual too
residual at         every triple token (token-aligned)          every token of the item's phrase / predicate
``logit_scale``     kept (unused) so checkpoints load strictly  absent
==================  ==========================================  ============================================

Why self-loops in object mode: sg2im updates a node only from the messages of its edges, so without an edge an
isolated item's output is a constant whatever the item is (sg2im itself links every object to an image node for
that reason).

State-dict keys in faithful mode are exactly LAION-SG's (``graph_conv.net1.0.weight`` ... ``alpha_obj``,
``logit_scale``), so ``baseline3_100.pt`` loads with ``strict=True`` (``from_laion_checkpoint``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from .graph_conv import GraphTripleConv, GraphTripleConvNet
from .graph_inputs import build_graph_inputs

Mode = Literal["object", "faithful"]
MODES = ("object", "faithful")
# default: PyTorch's Linear init, as LAION-SG runs (its initialize_parameters() is never called). Six such
# Linear-ReLU triple convolutions collapse their input spread layer by layer: a fresh encoder's object outputs are
# near-constant and a predicate inversion moves them ~1e-7 (docs/RESULTS.md, "An SG encoder that carries its
# graph"), and epsilon-MSE training from there only learns the gate. variance-keeping: He-normal weights (fan-in,
# ReLU gain) and zero biases, which keep the spread through the stack; same modules and keys, a labelled non-faithful
# choice for encoders trained from scratch.
Init = Literal["default", "variance-keeping"]
INITS = ("default", "variance-keeping")


class SGEncoder(ModelMixin, ConfigMixin):
    """Graph encoder + scalar gate. Text encoders are *not* submodules (as in LAION-SG): they are the pipeline's.

    Args:
        text_dim: width of the text-encoder hidden states (SD1.5 768; SDXL 2048 = 768 + 1280).
        embed_dim: graph width the projections map to (LAION-SG 512).
        hidden_dim: hidden width H of every GraphTripleConv (LAION-SG 512).
        num_graph_layers: layers of ``graph_net`` after the first ``graph_conv`` (LAION-SG 5, i.e. 6 in total).
        pooling: "avg" (LAION-SG) or "sum".
        mode: "object" (corrected default) or "faithful" (LAION-SG's token graph and checkpoint keys).
        pad_with_eos_copies: pad the prompt embeddings after EOS with copies of the EOS vector (LAION-SG); False
            keeps the encoder's own states of the padding tokens (plain SD/SDXL prompt encoding).
        self_loops: object mode only -- one self-loop per item (see module docstring).
        gate_init: initial value of ``alpha_obj`` (0: the encoder starts as the text-only model).
        init: "variance-keeping" (He-normal Linear weights, zero biases; the default for fresh encoders) or "default"
            (PyTorch's init, LAION-SG's behaviour, which collapses a six-layer stack). Loaded weights replace either.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, text_dim: int = 2048, embed_dim: int = 512, hidden_dim: int = 512, num_graph_layers: int = 5,
                 pooling: str = "avg", mode: Mode = "object", pad_with_eos_copies: bool = True,
                 self_loops: bool = True, gate_init: float = 0.0, init: Init = "variance-keeping") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"SGEncoder: mode must be one of {MODES}, got {mode!r}")
        if init not in INITS:
            raise ValueError(f"SGEncoder: init must be one of {INITS}, got {init!r}")
        self.projection_mlp_1 = nn.Linear(text_dim, embed_dim, bias=False)
        self.projection_mlp_2 = nn.Linear(embed_dim, text_dim, bias=False)
        self.graph_conv = GraphTripleConv(embed_dim, embed_dim, hidden_dim, pooling)
        self.graph_net = GraphTripleConvNet(embed_dim, num_graph_layers, hidden_dim, pooling)
        self.alpha_obj = nn.Parameter(torch.full((1,), float(gate_init)))
        if mode == "faithful":  # LAION-SG's CLIP-era leftover: in no loss, kept only for strict checkpoint loading
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        if init == "variance-keeping":
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    @property
    def gate(self) -> Tensor:
        return self.alpha_obj

    def graph_features(self, x: Tensor, pred: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        """The unit-norm graph features ``(N, embed_dim)``, ``(T, embed_dim)`` before ``projection_mlp_2``: what a
        layout head reads (``sg_layout``)."""
        x, pred = self.projection_mlp_1(x), self.projection_mlp_1(pred)
        x, pred = self.graph_conv(x, pred, edge_index)
        x, pred = self.graph_net(x, pred, edge_index)
        # F.normalize (eps 1e-12): a row the final ReLU zeroed stays 0 instead of becoming NaN.
        return F.normalize(x, dim=1), F.normalize(pred, dim=1)

    def forward(self, x: Tensor, pred: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        """Graph features in text width: ``(N, text_dim)`` for nodes and ``(T, text_dim)`` for predicates."""
        x, pred = self.graph_features(x, pred, edge_index)
        return self.projection_mlp_2(x), self.projection_mlp_2(pred)

    # ---- LAION-SG checkpoints -------------------------------------------------------------------------------
    @classmethod
    def laion_sg_config(cls, **overrides) -> dict:
        """The configuration of LAION-SG's released SDXL-SG encoder."""
        cfg = dict(text_dim=2048, embed_dim=512, hidden_dim=512, num_graph_layers=5, pooling="avg", mode="faithful",
                   pad_with_eos_copies=True, init="default")
        cfg.update(overrides)
        return cfg

    @classmethod
    def from_laion_checkpoint(cls, path: str | Path, **overrides) -> "SGEncoder":
        """Load LAION-SG's ``baseline3_100.pt`` (``{"state_dict": ...}``, possibly DDP-prefixed) strictly."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"LAION-SG SG-encoder checkpoint not found: {path} (the released file is "
                                    "baseline3_100.pt, linked from the LAION-SG README)")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a dict with a 'state_dict' entry (LAION-SG checkpoint format)")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        model = cls(**cls.laion_sg_config(**overrides))
        if model.config.mode != "faithful":  # only faithful mode keeps the unused logit_scale
            state.pop("logit_scale", None)
        model.load_state_dict(state, strict=True)
        return model


@torch.no_grad()
def input_sensitivity(encoder: SGEncoder, graphs, inverted, tokenizers, text_encoders) -> dict[str, float]:
    """Does the encoder carry its graph? Two numbers over the object (node) outputs of ``graphs``:

    * ``spread``: mean distance of a node output from the mean node output, relative to the mean output norm (0: every
      object gets the same vector, whatever it is);
    * ``inversion_change``: mean distance between each node's output for ``graphs`` and for ``inverted`` (the same
      graphs with other predicates, e.g. ``world.invert_predicates``), relative to the mean output norm (0: the
      relations never reach the objects).

    A default-init six-layer sg2im stack measures ~0.03 and ~1e-7; the variance-keeping init ~0.3 and ~1e-2
    (docs/RESULTS.md, "An SG encoder that carries its graph")."""
    mode, loops = encoder.config.mode, encoder.config.self_loops
    gi = build_graph_inputs(graphs, mode, tokenizers, text_encoders, self_loops=loops)
    gj = build_graph_inputs(inverted, mode, tokenizers, text_encoders, self_loops=loops)
    if gi.x.shape != gj.x.shape:
        raise ValueError("input_sensitivity: the inverted graphs must have the same nodes as the graphs")
    dtype = encoder.dtype
    a, _ = encoder(gi.x.to(dtype), gi.pred.to(dtype), gi.edge_index)
    b, _ = encoder(gj.x.to(dtype), gj.pred.to(dtype), gj.edge_index)
    norm = a.norm(dim=1).mean()
    return {"spread": float((a - a.mean(0)).norm(dim=1).mean() / norm),
            "inversion_change": float((a - b).norm(dim=1).mean() / norm), "nodes": int(a.shape[0])}
