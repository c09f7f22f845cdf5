"""The ``SceneGraph`` API: items, relations, phrase form, LAION-SG serialisation and graph views.

A ``SceneGraph`` is the library's in-memory graph, independent of where it came from (a LAION-SG record, the
shapes world, an extractor's output). Conversions:

* ``phrase(item)`` -- "attr1 attr2 label" (attributes first, label last, as LAION-SG's loader builds it);
* ``serialize()``   -- LAION-SG's linearised text: "s p o " per relation in order, then "item " per isolated item;
* ``to_networkx()`` -- a ``MultiDiGraph`` keyed by item_id (parallel relations kept);
* ``to_pyg()``      -- an object-level torch_geometric ``Data``: one node per item, one edge per relation.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from .schema import LaionSGRecord

if TYPE_CHECKING:  # heavy imports stay lazy: scene_graph is used by light tools (validate_sg.py)
    import networkx as nx
    from torch_geometric.data import Data


@dataclass(frozen=True)
class Item:
    item_id: int
    label: str
    attributes: tuple[str, ...] = ()
    global_item_id: int | None = None


@dataclass(frozen=True)
class Relation:
    subject: int  # item_id
    predicate: str
    object: int  # item_id
    triple_id: int | None = None
    global_relation_id: int | None = None


def phrase_of(label: str, attributes: Iterable[str], faithful: bool = False) -> str:
    """Phrase form "attrs label". ``faithful`` reproduces LAION-SG's loader exactly, which always inserts the
    separating space, so an item without attributes becomes " snow" (harmless once tokenised)."""
    attrs = list(attributes)
    if faithful:
        return " ".join(attrs) + " " + label
    return " ".join([*attrs, label])


@dataclass
class SceneGraph:
    items: list[Item]
    relations: list[Relation] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_id = {it.item_id: it for it in self.items}
        if len(self._by_id) != len(self.items):
            raise ValueError("SceneGraph: duplicate item_id")
        for k, r in enumerate(self.relations):
            for end in (r.subject, r.object):
                if end not in self._by_id:
                    raise ValueError(f"SceneGraph: relation {k} refers to unknown item_id {end}")

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_record(cls, record: LaionSGRecord | Mapping[str, Any]) -> "SceneGraph":
        rec = record if isinstance(record, LaionSGRecord) else LaionSGRecord.model_validate(record)
        items = [Item(i.item_id, i.label, tuple(i.attributes), i.global_item_id) for i in rec.items]
        rels = [Relation(r.item1, r.relation, r.item2, r.triple_id, r.global_relation_id) for r in rec.relations]
        return cls(items, rels)

    @classmethod
    def from_triples(cls, objects: Iterable[tuple[str, Iterable[str]]],
                     triples: Iterable[tuple[int, str, int]]) -> "SceneGraph":
        """Build from (label, attributes) per object (item_id = position) and (subject, predicate, object)."""
        items = [Item(i, label, tuple(attrs)) for i, (label, attrs) in enumerate(objects)]
        rels = [Relation(s, p, o, triple_id=k) for k, (s, p, o) in enumerate(triples)]
        return cls(items, rels)

    def to_record(self, img_id: str = "0", name: str = "", caption_ori: str = "", score: str = "0.0",
                  url: str = "") -> LaionSGRecord:
        """The graph as a LAION-SG record (missing global ids become the local ids)."""
        return LaionSGRecord(
            img_id=img_id, name=name, caption_ori=caption_ori, score=score, url=url,
            items=[{"item_id": it.item_id, "label": it.label, "attributes": list(it.attributes),
                    "global_item_id": it.item_id if it.global_item_id is None else it.global_item_id}
                   for it in self.items],
            relations=[{"triple_id": k if r.triple_id is None else r.triple_id, "item1": r.subject,
                        "relation": r.predicate, "item2": r.object,
                        "global_relation_id": k if r.global_relation_id is None else r.global_relation_id}
                       for k, r in enumerate(self.relations)],
        )

    # ---- queries ------------------------------------------------------------------------------------------
    def item(self, item_id: int) -> Item:
        return self._by_id[item_id]

    @property
    def isolated_items(self) -> list[Item]:
        """Items that appear in no relation, in item order."""
        used = {r.subject for r in self.relations} | {r.object for r in self.relations}
        return [it for it in self.items if it.item_id not in used]

    def phrase(self, item: Item | int, faithful: bool = False) -> str:
        it = item if isinstance(item, Item) else self._by_id[item]
        return phrase_of(it.label, it.attributes, faithful)

    def triples(self, faithful: bool = False) -> list[tuple[str, str, str]]:
        """(subject phrase, predicate, object phrase) per relation, in relation order."""
        return [(self.phrase(r.subject, faithful), r.predicate, self.phrase(r.object, faithful))
                for r in self.relations]

    def label_triples(self) -> list[tuple[str, str, str]]:
        """(subject label, predicate, object label): the triples SG-IoU compares."""
        return [(self._by_id[r.subject].label, r.predicate, self._by_id[r.object].label) for r in self.relations]

    def serialize(self, faithful: bool = False) -> str:
        """LAION-SG's linearised graph: "s p o " for every relation in order, then "item " per isolated item."""
        parts = [f"{s} {p} {o} " for s, p, o in self.triples(faithful)]
        parts += [f"{self.phrase(it, faithful)} " for it in self.isolated_items]
        return "".join(parts)

    def swapped(self) -> "SceneGraph":
        """The same items with every relation's subject and object exchanged ("A left of B" -> "B left of A"): the
        same entities and predicates, every stated direction reversed. Any predicate has this negative, where an
        inverse predicate ("right of") exists only in a closed vocabulary."""
        return SceneGraph(list(self.items), [replace(r, subject=r.object, object=r.subject) for r in self.relations])

    # ---- graph views --------------------------------------------------------------------------------------
    def to_networkx(self) -> "nx.MultiDiGraph":
        import networkx as nx  # heavy: scene_graph serves light tools (validate_sg.py)

        g = nx.MultiDiGraph()
        for it in self.items:
            g.add_node(it.item_id, label=it.label, attributes=list(it.attributes), phrase=self.phrase(it))
        for k, r in enumerate(self.relations):
            g.add_edge(r.subject, r.object, key=k, relation=r.predicate,
                       triple_id=k if r.triple_id is None else r.triple_id)
        return g

    def to_pyg(self) -> "Data":
        """Object-level graph: node i = ``items[i]`` (isolated items included, nodes shared across relations),
        edge k = ``relations[k]`` from subject to object. Text travels with the tensors as ``node_text``
        (phrase form), ``node_label`` and ``edge_text``; ``item_ids`` maps node index back to item_id."""
        import torch  # heavy: as networkx
        from torch_geometric.data import Data  # heavy: as networkx

        index = {it.item_id: n for n, it in enumerate(self.items)}
        if self.relations:
            edge_index = torch.tensor([[index[r.subject] for r in self.relations],
                                       [index[r.object] for r in self.relations]], dtype=torch.long)
        else:
            edge_index = torch.zeros(2, 0, dtype=torch.long)
        return Data(edge_index=edge_index, num_nodes=len(self.items),
                    item_ids=torch.tensor([it.item_id for it in self.items], dtype=torch.long),
                    node_text=[self.phrase(it) for it in self.items],
                    node_label=[it.label for it in self.items],
                    edge_text=[r.predicate for r in self.relations])

    def __len__(self) -> int:
        return len(self.items)
