"""A seeded toy temporal knowledge graph (TKG) and GETER-style explainable reasoning rows (spec section 9 (e)).

The CPU stand-in for the ETR benchmark (ICEWS / GDELT / WIKI with GPT-4o-polished explanations):

- `generate_tkg`: E entities, R relations, T timestamps; each timestamp holds `facts_per_timestamp` events: some
  recur from the recent past, some follow a composition rule (a-r1->b, b-r2->c  =>  a-(r1+r2 mod R)->c), the rest
  are random. Timestamps >= `split_time` are the future split the queries come from.
- `reasoning_paths`: BFS over the events in the window [t_q - w, t_q) (edges usable in both directions) for the
  shortest paths from the query's subject to its object, at most `max_hops` events long.
- Labels (`label_for`): "Unsure" when the chain quads do not connect subject and object; otherwise "Yes" when the
  query quad exists in the future split and "No" when it does not (object corruption).
- Explanations come from templates (the paper's were polished by GPT-4o).

Rows: {prompt, response, query: [s, r, o, t], chains: [[s, r, o, t], ...], label, explanation}; the response is
"<label>. <explanation>". Labels cycle Yes, No, Unsure (balanced).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from datamodules.errors import DataConfigError

LABELS = ("Yes", "No", "Unsure")
ENTITY_NAMES = ("Arland", "Borova", "Cestia", "Dalmor", "Elvaria", "Fenwick", "Galdor", "Hestia", "Ilyria", "Jorvik",
                "Kestrel", "Lumora", "Marwen", "Norland", "Ostrava", "Pellam", "Quoria", "Rivena", "Solara", "Tavern")
RELATION_NAMES = ("made a statement to", "consulted", "expressed intent to cooperate with", "provided aid to",
                  "criticized", "signed an agreement with", "hosted a visit of", "threatened", "negotiated with",
                  "accused")

Quad = tuple[int, int, int, int]


@dataclass
class TemporalKG:
    """Events (s, r, o, t) sorted by time, and names to verbalise them."""

    num_entities: int
    num_relations: int
    num_timestamps: int
    split_time: int
    facts: list[Quad]
    entity_names: list[str] = field(default_factory=list)
    relation_names: list[str] = field(default_factory=list)

    @property
    def fact_set(self) -> set[Quad]:
        return set(self.facts)

    @property
    def future(self) -> list[Quad]:
        """The future split: events at t >= split_time (where queries come from)."""
        return [f for f in self.facts if f[3] >= self.split_time]

    def window(self, t_q: int, w: int) -> list[Quad]:
        """Events with t_q - w <= t < t_q."""
        return [f for f in self.facts if t_q - w <= f[3] < t_q]

    def verbalise(self, quad: Quad) -> str:
        s, r, o, t = quad
        return f"{self.entity_names[s]} {self.relation_names[r]} {self.entity_names[o]} on day {t}"


def _names(base: tuple[str, ...], n: int, stem: str) -> list[str]:
    return [base[i] if i < len(base) else f"{stem}{i}" for i in range(n)]


def generate_tkg(*, num_entities: int = 20, num_relations: int = 5, num_timestamps: int = 30,
                 facts_per_timestamp: int = 12, future_fraction: float = 0.3, recur_prob: float = 0.3,
                 rule_prob: float = 0.3, seed: int = 0) -> TemporalKG:
    """A seeded TKG; the same arguments give the same events.

    >>> g = generate_tkg(seed=1)
    >>> (g.num_entities, g.num_relations, g.split_time, len(g.facts) == len(set(g.facts)))
    (20, 5, 21, True)
    """
    if num_entities < 3 or num_relations < 1 or num_timestamps < 3 or facts_per_timestamp < 1:
        raise DataConfigError(f"temporal_kg: need num_entities >= 3, num_relations >= 1, num_timestamps >= 3, "
                              f"facts_per_timestamp >= 1; got {num_entities}, {num_relations}, {num_timestamps}, "
                              f"{facts_per_timestamp}")
    if not 0.0 < future_fraction < 1.0:
        raise DataConfigError(f"temporal_kg: future_fraction={future_fraction} must be in (0, 1)")
    if facts_per_timestamp > num_entities * (num_entities - 1) * num_relations // 2:
        raise DataConfigError(f"temporal_kg: facts_per_timestamp={facts_per_timestamp} is too many for "
                              f"{num_entities} entities and {num_relations} relations")
    rng = random.Random(f"temporal-kg:{seed}")
    split_time = num_timestamps - max(1, round(future_fraction * num_timestamps))
    facts: list[Quad] = []
    recent: list[Quad] = []  # events of the last 3 timestamps
    for t in range(num_timestamps):
        now: set[tuple[int, int, int]] = set()
        tries = 0
        while len(now) < facts_per_timestamp and tries < 100 * facts_per_timestamp:
            tries += 1
            u = rng.random()
            if recent and u < recur_prob:
                s, r, o, _ = rng.choice(recent)
            elif len(recent) > 1 and u < recur_prob + rule_prob:
                a, r1, b, _ = rng.choice(recent)
                nxt = [f for f in recent if f[0] == b and f[2] != a]
                if not nxt:
                    continue
                _, r2, c, _ = rng.choice(nxt)
                s, r, o = a, (r1 + r2) % num_relations, c
            else:
                s, o = rng.sample(range(num_entities), 2)
                r = rng.randrange(num_relations)
            if s != o:
                now.add((s, r, o))
        stamp = [(s, r, o, t) for s, r, o in sorted(now)]
        facts.extend(stamp)
        recent = [f for f in recent if f[3] > t - 2] + stamp
    return TemporalKG(num_entities, num_relations, num_timestamps, split_time, facts,
                      _names(ENTITY_NAMES, num_entities, "Entity"), _names(RELATION_NAMES, num_relations, "relation_"))


def reasoning_paths(events: list[Quad], source: int, target: int, *, max_hops: int = 3, max_paths: int = 3
                    ) -> list[list[Quad]]:
    """Up to `max_paths` shortest event paths from `source` to `target` (BFS; an event links its subject and
    object in both directions; no entity is visited twice on a path), earliest events first among equals.

    >>> reasoning_paths([(0, 0, 1, 5), (1, 2, 2, 6), (3, 1, 2, 4)], 0, 2)
    [[(0, 0, 1, 5), (1, 2, 2, 6)]]
    """
    adjacency: dict[int, list[tuple[int, Quad]]] = {}
    for quad in sorted(events, key=lambda q: (q[3], q)):
        s, _, o, _ = quad
        adjacency.setdefault(s, []).append((o, quad))
        adjacency.setdefault(o, []).append((s, quad))
    found: list[list[Quad]] = []
    queue: deque[tuple[int, list[Quad], frozenset[int]]] = deque([(source, [], frozenset([source]))])
    while queue and len(found) < max_paths:
        node, path, seen = queue.popleft()
        if found and len(path) >= len(found[0]):  # only shortest paths
            break
        if len(path) >= max_hops:
            continue
        for nxt, quad in adjacency.get(node, []):
            if nxt in seen:
                continue
            if nxt == target:
                found.append(path + [quad])
                if len(found) >= max_paths:
                    break
            else:
                queue.append((nxt, path + [quad], seen | {nxt}))
    return found


def chain_connects(source: int, target: int, chains: list) -> bool:
    """Whether the chain quads link `source` to `target` (undirected union-find).

    >>> chain_connects(0, 2, [[0, 1, 1, 3], [1, 0, 2, 4]]), chain_connects(0, 2, [[0, 1, 1, 3]])
    (True, False)
    """
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for s, _, o, _ in chains:
        parent[find(s)] = find(o)
    return source != target and find(source) == find(target)


def label_for(query: list[int], chains: list, facts: set[Quad]) -> str:
    """The label rule: Unsure when the chains do not connect subject and object, else Yes when the query quad is
    an event (of the future split), else No.

    >>> label_for([0, 1, 2, 9], [[0, 0, 2, 8]], {(0, 1, 2, 9)}), label_for([0, 1, 2, 9], [], set())
    ('Yes', 'Unsure')
    """
    if not chain_connects(query[0], query[2], chains):
        return "Unsure"
    return "Yes" if tuple(query) in facts else "No"


# ------------------------------------------------------------------------------------------- verbalisation
def render_prompt(kg: TemporalKG, query: Quad, paths: list[list[Quad]], window: int) -> str:
    """The user turn: the query and the numbered reasoning chains of the window."""
    t = query[3]
    lines = [f"Query: is it true that {kg.verbalise(query)}?",
             f"Reasoning chains (events from day {max(0, t - window)} to day {t - 1}):"]
    lines += [f"Chain {i + 1}: " + "; ".join(kg.verbalise(q) for q in path) + "." for i, path in enumerate(paths)]
    if not paths:
        lines.append("(no events found)")
    return "\n".join(lines)


def explain(kg: TemporalKG, query: Quad, paths: list[list[Quad]], label: str) -> str:
    """Template explanation of a label from the query and its chains."""
    s, r, o, t = query
    subj, obj, rel = kg.entity_names[s], kg.entity_names[o], kg.relation_names[r]
    evidence = "; ".join(kg.verbalise(q) for q in paths[0]) if paths and paths[0] else ""
    if label == "Yes":
        return (f"The chain {evidence} links {subj} to {obj} shortly before day {t}, and this pattern makes it "
                f"likely that {subj} {rel} {obj} on day {t}.")
    if label == "No":
        return (f"Although {evidence} links {subj} to {obj}, the recent events do not point to {subj} "
                f"{rel} {obj}, so this event on day {t} is not supported.")
    ends = " and ".join(f"{kg.entity_names[e]}" for e in (s, o))
    return (f"The chains do not connect {ends}: no event in the window links them before day {t}, so there is "
            f"not enough evidence to decide.")


# ------------------------------------------------------------------------------------------- rows
def make_temporal_kg(n: int, *, seed: int = 0, num_entities: int = 20, num_relations: int = 5,
                     num_timestamps: int = 30, facts_per_timestamp: int = 12, future_fraction: float = 0.3,
                     window: int = 5, max_hops: int = 3, max_paths: int = 3) -> list[dict]:
    """`n` GETER rows from the seeded TKG (`generate_tkg` with the same seed and sizes); labels cycle
    Yes, No, Unsure. Queries are drawn without repetition until a label's candidates run out.

    >>> rows = make_temporal_kg(3, seed=0)
    >>> [r["label"] for r in rows], rows[0]["response"].startswith("Yes. ")
    (['Yes', 'No', 'Unsure'], True)
    """
    if n < 1:
        raise DataConfigError(f"temporal_kg: n={n} rows must be >= 1")
    if window < 1 or max_hops < 1 or max_paths < 1:
        raise DataConfigError(f"temporal_kg: window={window}, max_hops={max_hops}, max_paths={max_paths} must be >= 1")
    kg = generate_tkg(num_entities=num_entities, num_relations=num_relations, num_timestamps=num_timestamps,
                      facts_per_timestamp=facts_per_timestamp, future_fraction=future_fraction, seed=seed)
    rng = random.Random(f"temporal-kg-rows:{seed}")
    facts = kg.fact_set
    by_window: dict[int, list[Quad]] = {}

    def events(t: int) -> list[Quad]:
        if t not in by_window:
            by_window[t] = kg.window(t, window)
        return by_window[t]

    def paths(q: Quad) -> list[list[Quad]]:
        return reasoning_paths(events(q[3]), q[0], q[2], max_hops=max_hops, max_paths=max_paths)

    future = kg.future
    rng.shuffle(future)
    connected = [(q, p) for q in future if (p := paths(q))]
    if not connected:
        raise DataConfigError("temporal_kg: no future event has a reasoning chain in its window; raise "
                              "facts_per_timestamp, window or max_hops")

    def yes_rows():
        for q, p in connected:
            yield q, p

    def no_rows():
        for q, _ in connected:
            objects = list(range(kg.num_entities))
            rng.shuffle(objects)
            for o2 in objects:
                bad = (q[0], q[1], o2, q[3])
                if o2 != q[0] and o2 != q[2] and bad not in facts and (p := paths(bad)):
                    yield bad, p
                    break

    def unsure_rows():
        for q, p in connected:
            broken = _disconnect(p[0], q, events(q[3]), rng)
            if broken is not None:
                yield q, broken

    makers = {"Yes": yes_rows, "No": no_rows, "Unsure": unsure_rows}
    streams = {label: makers[label]() for label in LABELS}
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        item = next(streams[label], None)
        if item is None:  # this label's candidates are used up: start its stream again (repeated rows)
            streams[label] = makers[label]()
            item = next(streams[label], None)
            if item is None:
                raise DataConfigError(f"temporal_kg: the TKG gives no {label!r} example; raise facts_per_timestamp")
        query, chain_paths = item
        chains = list(dict.fromkeys(q for path in chain_paths for q in path))
        assert label_for(list(query), chains, facts) == label, (label, query, chains)
        explanation = explain(kg, query, chain_paths, label)
        rows.append({"prompt": render_prompt(kg, query, chain_paths, window), "response": f"{label}. {explanation}",
                     "query": list(query), "chains": [list(c) for c in chains], "label": label,
                     "explanation": explanation})
    return rows


def _disconnect(path: list[Quad], query: Quad, events: list[Quad], rng: random.Random) -> list[list[Quad]] | None:
    """Chains for an Unsure row: the path without its last event, plus (for a one-event path) an event at the
    subject that does not reach the object; None when no such disconnected chain exists."""
    s, _, o, _ = query
    kept = path[:-1]
    if not kept:
        dangling = [e for e in events if s in (e[0], e[2]) and o not in (e[0], e[2])]
        if not dangling:
            return None
        kept = [rng.choice(dangling)]
    if chain_connects(s, o, kept):
        return None
    return [kept]


__all__ = ["LABELS", "TemporalKG", "chain_connects", "explain", "generate_tkg", "label_for", "make_temporal_kg",
           "reasoning_paths", "render_prompt"]
