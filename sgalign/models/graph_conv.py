"""sg2im's triple graph convolution (Johnson et al. 2018), as LAION-SG's SDXL-SG uses it, on torch_geometric.

One layer, for node vectors ``x (N, D_in)``, predicate vectors ``pred (T, D_in)`` and edges ``edge_index (2, T)``
(row 0 = subject node, row 1 = object node), reference anchor-laion-sg.md §2.2:

1. per edge, ``net1([x[s] | pred | x[o]])`` -> ``(T, 2H + D_out)``; ``net1`` = Linear, ReLU, Linear, ReLU;
2. columns ``[0:H]`` = subject message, ``[H:H+D_out]`` = the new predicate, ``[H+D_out:]`` = object message;
3. each node pools the messages of the edges it is subject or object of: sum, or (``avg``) sum / count with
   count clamped to >= 1 (a node on no edge gets 0);
4. ``net2`` (Linear, ReLU, Linear, ReLU) -> new node vectors ``(N, D_out)``.

The ReLU after the *last* Linear of both MLPs (sg2im's ``final_nonlinearity=True``) is why the state-dict keys
are ``net1.0``/``net1.2`` and ``net2.0``/``net2.2`` -- the names LAION-SG's checkpoint uses.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing


def build_mlp(dims: list[int]) -> nn.Sequential:
    """Linear/ReLU pairs, a ReLU after every Linear including the last (sg2im ``final_nonlinearity=True``)."""
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(d_in, d_out), nn.ReLU()]
    return nn.Sequential(*layers)


class GraphTripleConv(MessagePassing):
    """One sg2im triple convolution. ``pooling`` = "avg" (LAION-SG) or "sum"."""

    def __init__(self, input_dim: int, output_dim: int | None = None, hidden_dim: int = 512,
                 pooling: str = "avg") -> None:
        if pooling not in ("avg", "sum"):
            raise ValueError(f"pooling must be 'avg' or 'sum', got {pooling!r}")
        # torch_geometric's "mean" is sum / max(count, 1): exactly sg2im's avg pooling with the clamp.
        super().__init__(aggr="mean" if pooling == "avg" else "add")
        output_dim = output_dim or input_dim
        self.input_dim, self.output_dim, self.hidden_dim, self.pooling = input_dim, output_dim, hidden_dim, pooling
        self.net1 = build_mlp([3 * input_dim, hidden_dim, 2 * hidden_dim + output_dim])
        self.net2 = build_mlp([hidden_dim, hidden_dim, output_dim])

    def forward(self, x: Tensor, pred: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        h, d_out = self.hidden_dim, self.output_dim
        t = self.edge_updater(edge_index, x=x, pred=pred)  # (T, 2H + D_out)
        new_s, new_p, new_o = t[:, :h], t[:, h:h + d_out], t[:, h + d_out:]
        # Every edge sends two messages: the object message to its object node and the subject message to its
        # subject node. Stacking the edge list with its reverse makes both "incoming" for the aggregation.
        both = torch.cat([edge_index, edge_index.flip(0)], dim=1)
        pooled = self.propagate(both, msg=torch.cat([new_o, new_s], dim=0), size=(x.size(0), x.size(0)))
        return self.net2(pooled), new_p

    def edge_update(self, x_j: Tensor, x_i: Tensor, pred: Tensor) -> Tensor:  # j = subject, i = object
        return self.net1(torch.cat([x_j, pred, x_i], dim=1))

    def message(self, msg: Tensor) -> Tensor:
        return msg

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.input_dim}, {self.output_dim}, hidden={self.hidden_dim}, "
                f"pooling={self.pooling})")


class GraphTripleConvNet(nn.Module):
    """A stack of ``num_layers`` ``GraphTripleConv`` of one width (keys ``gconvs.{i}.net{1,2}.{0,2}.*``)."""

    def __init__(self, input_dim: int, num_layers: int = 5, hidden_dim: int = 512, pooling: str = "avg") -> None:
        super().__init__()
        self.gconvs = nn.ModuleList(
            [GraphTripleConv(input_dim, input_dim, hidden_dim, pooling) for _ in range(num_layers)])

    def forward(self, x: Tensor, pred: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        for gconv in self.gconvs:
            x, pred = gconv(x, pred, edge_index)
        return x, pred
