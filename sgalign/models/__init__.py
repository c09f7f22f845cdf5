"""Scene-graph encoder (torch_geometric message passing), the conditioning it feeds the UNet, local loading and
the tiny-checkpoint factory."""
from .conditioning import SGConditioning, build_conditioning, make_add_time_ids, unconditional_conditioning
from .graph_conv import GraphTripleConv, GraphTripleConvNet, build_mlp
from .graph_inputs import GraphInputs, as_scene_graph, as_scene_graphs, build_graph_inputs
from .sg_encoder import MODES, SGEncoder
from .text import TextStates, encode_texts

__all__ = [
    "SGConditioning", "build_conditioning", "make_add_time_ids", "unconditional_conditioning", "GraphTripleConv",
    "GraphTripleConvNet", "build_mlp", "GraphInputs", "as_scene_graph", "as_scene_graphs", "build_graph_inputs",
    "MODES", "SGEncoder", "TextStates", "encode_texts",
]
