"""Synthetic two-hop QA over small document corpora (the CPU substitute for MuSiQue in StepSearch, spec 11 (e)).

Each question chains two facts of an invented world: "X was born in Y" and "Y's capital is Z" -> "What is the
capital of the country where X was born?" (answer Z). Every row carries what StepSearch's rewards need:

- `answer` and `aliases` (the gold list for F1 is the answer plus its aliases);
- `support_docs`: the two gold paragraphs (their text, as retrieved docs are compared by text);
- `search_keys`: keyword groups, one per hop, each a list of alternative phrasings (GPT-4o wrote these for
  MuSiQue; here they come from templates);
- `corpus` and `corpus_id`: where its retrieval corpus is. Worlds of `people_per_corpus` people and
  `countries_per_corpus` countries get one corpus each (their gold paragraphs plus `num_distractors`
  distractor paragraphs: 50-200 paragraphs with the defaults' range), all written once to one JSONL file
  (``{"id", "title", "text", "corpus_id"}`` per line) whose name is a hash of the options, under `corpus_dir`
  (default ``$R1_CACHE/two_hop``). The same options always give the same file, so the rows and the file can be
  rebuilt anywhere from the seed.

Names are built from syllables and unique within one call, so no question is asked twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from pathlib import Path

from datamodules.errors import DataConfigError

_VERSION = 1
_ONSETS = ["b", "br", "d", "dr", "f", "g", "k", "kl", "l", "m", "n", "p", "r", "s", "t", "th", "v", "z"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
_CODAS = ["", "l", "n", "r", "s", "th", "m"]
_COUNTRY_ENDS = ["ia", "land", "stan", "ova", "ar", "eth"]
_CITY_ENDS = ["port", "ford", "burg", "ville", "holm", "mere"]
_JOBS = ["painter", "engineer", "sailor", "botanist", "poet", "chemist", "judge", "baker", "historian", "pilot"]
_GOODS = ["wool", "copper", "tea", "glass", "salt", "timber", "silk", "olives"]
_QUESTIONS = [
    "What is the capital of the country where {person} was born?",
    "{person} was born in a country. What is the capital of that country?",
    "Which city is the capital of the birth country of {person}?",
]


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))


def _unique(rng: random.Random, taken: set[str], make) -> str:
    for _ in range(10_000):
        name = make()
        if name not in taken:
            taken.add(name)
            return name
    raise DataConfigError("make_two_hop: ran out of unique names; lower n or the world sizes")


def make_two_hop(n: int, *, seed: int = 0, people_per_corpus: int = 20, countries_per_corpus: int = 8,
                 num_distractors: int = 40, corpus_dir: str | None = None) -> list[dict]:
    """`n` rows ``{question, answer, aliases, support_docs, search_keys, corpus, corpus_id, person, country}``.

    A corpus holds `people_per_corpus` birth paragraphs, `countries_per_corpus` capital paragraphs and
    `num_distractors` distractors (paragraphs about the same people, cities and countries that state neither
    fact); one question per person.

    >>> row = make_two_hop(1, seed=0, corpus_dir=tempfile.mkdtemp())[0]
    >>> sorted(row)
    ['aliases', 'answer', 'corpus', 'corpus_id', 'country', 'person', 'question', 'search_keys', 'support_docs']
    >>> row["answer"] in row["support_docs"][1] and row["country"] in row["support_docs"][0]
    True
    """
    if n < 1:
        raise DataConfigError(f"make_two_hop: n={n} must be >= 1")
    for name, value in (("people_per_corpus", people_per_corpus), ("countries_per_corpus", countries_per_corpus)):
        if value < 1:
            raise DataConfigError(f"make_two_hop: {name}={value} must be >= 1")
    if num_distractors < 0:
        raise DataConfigError(f"make_two_hop: num_distractors={num_distractors} must be >= 0")
    rng = random.Random(f"two_hop:{seed}")
    taken: set[str] = set()
    rows: list[dict] = []
    docs: list[dict] = []
    world = 0
    while len(rows) < n:
        corpus_id = f"two_hop-{seed}-{world}"
        countries = [_unique(rng, taken, lambda: _word(rng, 2).capitalize() + rng.choice(_COUNTRY_ENDS))
                     for _ in range(countries_per_corpus)]
        capitals = [_unique(rng, taken, lambda: _word(rng, 1).capitalize() + rng.choice(_CITY_ENDS))
                    for _ in countries]
        people = [_unique(rng, taken, lambda: f"{_word(rng, 2).capitalize()} {_word(rng, 2).capitalize()}")
                  for _ in range(min(people_per_corpus, n - len(rows)))]
        births = [rng.randrange(len(countries)) for _ in people]
        world_docs: list[dict] = []

        def add(title: str, text: str) -> str:
            if any(d["text"] == text for d in world_docs):  # a repeated distractor would count as "seen"
                return text
            world_docs.append({"id": f"{corpus_id}-{len(world_docs)}", "title": title, "text": text,
                               "corpus_id": corpus_id})
            return text

        capital_text = [add(c, f"{c}'s capital is {z}. {c} is known for its {rng.choice(_GOODS)}.")
                        for c, z in zip(countries, capitals)]
        for person, b in zip(people, births):
            y = countries[b]
            birth = add(person, f"{person} was born in {y} in {rng.randint(1850, 1990)}. "
                                f"{person} worked as a {rng.choice(_JOBS)}.")
            rows.append({
                "question": rng.choice(_QUESTIONS).format(person=person),
                "answer": capitals[b],
                "aliases": [f"{capitals[b]} City", f"City of {capitals[b]}"],
                "support_docs": [birth, capital_text[b]],
                "search_keys": [[f"{person} born", f"{person} birthplace", f"where was {person} born"],
                                [f"{y} capital", f"capital of {y}", f"{y} capital city"]],
                "corpus_id": corpus_id, "person": person, "country": y,
            })
        for _ in range(num_distractors):
            person, c, c2 = rng.choice(people), rng.randrange(len(countries)), rng.randrange(len(countries))
            kind = rng.randrange(3)
            if kind == 0:
                add(person, f"{person} once travelled to {capitals[c]} to study {rng.choice(_GOODS)}.")
            elif kind == 1:
                add(capitals[c], f"{capitals[c]} is a {rng.choice(['small', 'busy', 'quiet'])} city with a "
                                 f"famous {rng.choice(_GOODS)} market; {person} visited it.")
            else:
                add(countries[c], f"{countries[c]} trades {rng.choice(_GOODS)} with {countries[c2]}.")
        docs += world_docs
        world += 1
    path = _write_corpus(docs, corpus_dir, key=f"{_VERSION}:{n}:{seed}:{people_per_corpus}:{countries_per_corpus}:"
                                              f"{num_distractors}")
    for row in rows:
        row["corpus"] = path
    return rows


def _write_corpus(docs: list[dict], corpus_dir: str | None, *, key: str) -> str:
    """Write `docs` as JSONL once (atomically; an existing file with this key is reused); returns its path."""
    if corpus_dir is None:
        from modules.models.cache import default_cache_dir

        directory = default_cache_dir() / "two_hop"
    else:
        directory = Path(corpus_dir).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"two_hop-{hashlib.sha1(key.encode()).hexdigest()[:16]}.jsonl"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".two_hop-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(d) + "\n" for d in docs)
        os.replace(tmp, path)
    return str(path.resolve())
