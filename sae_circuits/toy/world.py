"""A small synthetic world of cities, states and countries, rendered as simple English sentences.

The world has 24 US states and 8 countries (:data:`PLACES`). Each place has a capital, five
other cities, a largest city, a region and a language. Every name is one word, one token
(multi-word names are joined with underscores: ``new_york``, ``san_antonio``); the vocabulary is
lowercase, and the toy tokenizer lowercases its input, so ``"Dallas"`` and ``"dallas"`` are the
same token.

Sentences come from a few templates, each ending with the answer word:

* one-hop, city -> place, the place right after the city (so a model must know the place *at
  the city's position*): ``"she lives in dallas texas"``, ``"he moved to dallas texas"``,
  ``"we flew to dallas texas"``, ``"dallas texas is a city"``; and, with the place further
  away, ``"the state containing dallas is texas"``;
* one-hop, place -> attribute: ``"the capital of texas is austin"``,
  ``"austin is the capital of texas"``, ``"the region of texas is south"``,
  ``"the language of texas is english"``, ``"the largest city in texas is houston"``;
* two-hop, city -> place -> attribute: ``"the capital of the state containing dallas is austin"``,
  ``"the region of the state containing dallas is south"``,
  ``"the language of the country containing lyon is french"``.

There is deliberately no ``"dallas is in texas"``: a sentence where the place is predicted a few
tokens after the city teaches a model to copy the city's identity forward and look its place up
again there, and then the two-hop answer does not go through a place representation at the
city (see ``docs/toy_model.md``).

*Held-out* cities (two per place, always including ``dallas`` and ``oakland``) keep their
adjacent one-hop templates in training, but their ``"the state containing X is"`` sentence and
all their two-hop sentences are held out: answering them needs composition (city -> place learnt
at the city's position, place -> capital learnt from ``"the capital of texas is austin"`` and
from the place's other cities).

Example:
    >>> world = build_world()
    >>> world.place_of("dallas").name, world.place_of("dallas").capital
    ('texas', 'austin')
    >>> [s.text for s in world.sentences() if s.subject == "dallas" and s.hops == 2][:1]
    ['the capital of the state containing dallas is austin']
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "DEMO_ANSWER",
    "DEMO_PROMPT",
    "PLACES",
    "SPECIAL",
    "SWAP_ANSWER",
    "SWAP_PROMPT",
    "Place",
    "Sentence",
    "World",
    "build_world",
]

#: The prompt of the demo (the toy tokenizer lowercases it).
DEMO_PROMPT = "The capital of the state containing Dallas is"
#: Its answer (two hops: dallas -> texas -> austin).
DEMO_ANSWER = "austin"
#: The prompt whose state features are swapped in (oakland -> california -> sacramento).
SWAP_PROMPT = "The capital of the state containing Oakland is"
#: Its answer.
SWAP_ANSWER = "sacramento"

#: Special tokens: beginning of sequence, padding, unknown word (ids 0, 1, 2).
SPECIAL = ("<bos>", "<pad>", "<unk>")


@dataclass(frozen=True)
class Place:
    """A US state or a country.

    Attributes:
        name: One-word name, e.g. ``"texas"``.
        kind: ``"state"`` or ``"country"``.
        capital: The capital city.
        cities: Five other cities (not the capital).
        largest: The largest city (the capital or one of ``cities``).
        region: ``"south"``, ``"west"``, ``"midwest"``, ``"northeast"``, ``"europe"``, ...
        language: ``"english"``, ``"french"``, ...
    """

    name: str
    kind: Literal["state", "country"]
    capital: str
    cities: tuple[str, ...]
    largest: str
    region: str
    language: str

    @property
    def all_cities(self) -> tuple[str, ...]:
        """The capital followed by the other cities."""
        return (self.capital, *self.cities)


def _state(name: str, capital: str, cities: str, largest: str, region: str) -> Place:
    return Place(name, "state", capital, tuple(cities.split()), largest, region, "english")


def _country(name: str, capital: str, cities: str, largest: str, region: str, lang: str) -> Place:
    return Place(name, "country", capital, tuple(cities.split()), largest, region, lang)


#: The world: 24 US states and 8 countries, every name a single lowercase token.
PLACES: tuple[Place, ...] = (
    _state("texas", "austin", "dallas houston san_antonio el_paso lubbock", "houston", "south"),
    _state(
        "california",
        "sacramento",
        "oakland los_angeles san_diego fresno san_jose",
        "los_angeles",
        "west",
    ),
    _state(
        "new_york", "albany", "buffalo rochester syracuse yonkers ithaca", "buffalo", "northeast"
    ),
    _state(
        "florida",
        "tallahassee",
        "miami orlando tampa jacksonville pensacola",
        "jacksonville",
        "south",
    ),
    _state(
        "illinois", "springfield", "chicago peoria rockford naperville joliet", "chicago", "midwest"
    ),
    _state("washington", "olympia", "seattle spokane tacoma bellevue yakima", "seattle", "west"),
    _state("georgia", "atlanta", "savannah augusta macon athens valdosta", "atlanta", "south"),
    _state("ohio", "columbus", "cleveland cincinnati toledo akron dayton", "columbus", "midwest"),
    _state(
        "pennsylvania",
        "harrisburg",
        "philadelphia pittsburgh allentown erie scranton",
        "philadelphia",
        "northeast",
    ),
    _state(
        "michigan",
        "lansing",
        "detroit grand_rapids flint ann_arbor kalamazoo",
        "detroit",
        "midwest",
    ),
    _state("arizona", "phoenix", "tucson mesa flagstaff yuma tempe", "phoenix", "west"),
    _state("colorado", "denver", "boulder aurora pueblo fort_collins vail", "denver", "west"),
    _state("nevada", "carson_city", "las_vegas reno henderson elko sparks", "las_vegas", "west"),
    _state("oregon", "salem", "portland eugene bend medford corvallis", "portland", "west"),
    _state(
        "massachusetts",
        "boston",
        "worcester cambridge lowell plymouth quincy",
        "boston",
        "northeast",
    ),
    _state(
        "louisiana",
        "baton_rouge",
        "new_orleans shreveport lafayette monroe lake_charles",
        "new_orleans",
        "south",
    ),
    _state(
        "tennessee",
        "nashville",
        "memphis knoxville chattanooga clarksville jackson",
        "nashville",
        "south",
    ),
    _state(
        "missouri",
        "jefferson_city",
        "kansas_city st_louis columbia joplin branson",
        "kansas_city",
        "midwest",
    ),
    _state(
        "minnesota",
        "saint_paul",
        "minneapolis duluth bloomington mankato winona",
        "minneapolis",
        "midwest",
    ),
    _state(
        "wisconsin", "madison", "milwaukee green_bay kenosha oshkosh racine", "milwaukee", "midwest"
    ),
    _state(
        "north_carolina",
        "raleigh",
        "charlotte durham greensboro asheville wilmington",
        "charlotte",
        "south",
    ),
    _state(
        "virginia", "richmond", "norfolk roanoke arlington alexandria lynchburg", "norfolk", "south"
    ),
    _state("utah", "salt_lake_city", "provo ogden st_george logan moab", "salt_lake_city", "west"),
    _state(
        "kentucky",
        "frankfort",
        "louisville lexington bowling_green paducah covington",
        "louisville",
        "south",
    ),
    _country(
        "france", "paris", "lyon marseille nice toulouse bordeaux", "paris", "europe", "french"
    ),
    _country(
        "germany",
        "berlin",
        "munich hamburg cologne stuttgart dresden",
        "berlin",
        "europe",
        "german",
    ),
    _country("japan", "tokyo", "osaka kyoto nagoya sapporo kobe", "tokyo", "asia", "japanese"),
    _country("italy", "rome", "milan naples turin venice florence", "rome", "europe", "italian"),
    _country(
        "spain", "madrid", "barcelona seville valencia bilbao malaga", "madrid", "europe", "spanish"
    ),
    _country(
        "brazil",
        "brasilia",
        "rio sao_paulo salvador recife manaus",
        "sao_paulo",
        "americas",
        "portuguese",
    ),
    _country(
        "mexico",
        "mexico_city",
        "guadalajara monterrey tijuana cancun puebla",
        "mexico_city",
        "americas",
        "spanish",
    ),
    _country(
        "china", "beijing", "shanghai shenzhen wuhan chengdu xian", "shanghai", "asia", "chinese"
    ),
)

# words of the templates (besides names)
_FUNCTION_WORDS = (
    "the", "capital", "of", "state", "country", "containing", "is", "in", "a", "city",
    "region", "language", "largest", "she", "lives", "he", "moved", "to", "we", "flew",
)  # fmt: skip

Split = Literal["train", "heldout"]


@dataclass(frozen=True)
class Sentence:
    """One sentence of the corpus; its last word is the answer.

    Attributes:
        text: Lowercase words separated by single spaces (the answer last).
        template: Template name, e.g. ``"two_hop_capital"``, ``"city_in"``.
        relation: ``"place"``, ``"capital"``, ``"region"``, ``"language"`` or ``"largest"``.
        subject: The city (or, for place facts, the place) the sentence is about.
        answer: The last word.
        hops: 1 or 2.
        split: ``"train"`` or ``"heldout"``.
    """

    text: str
    template: str
    relation: str
    subject: str
    answer: str
    hops: int
    split: Split

    @property
    def prompt(self) -> str:
        """The sentence without its answer."""
        return self.text.rsplit(" ", 1)[0]


@dataclass
class World:
    """The places, which cities are held out, and the sentences that follow.

    Attributes:
        places: The states and countries.
        held_out: Cities whose two-hop sentences (and ``"the state containing X is"``) are held
            out of training.
    """

    places: tuple[Place, ...] = PLACES
    held_out: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        self._place_of = {c: p for p in self.places for c in p.all_cities}
        words = [w for w in self.vocabulary() if w not in SPECIAL]
        if len(set(words)) != len(words):
            dup = sorted({w for w in words if words.count(w) > 1})
            raise ValueError(f"the world has duplicate names: {dup}")
        unknown = set(self.held_out) - set(self._place_of)
        if unknown:
            raise ValueError(f"held-out cities not in the world: {sorted(unknown)}")

    @property
    def cities(self) -> list[str]:
        """All cities (capitals included), in place order."""
        return [c for p in self.places for c in p.all_cities]

    def place_of(self, city: str) -> Place:
        """The state or country containing ``city``."""
        return self._place_of[city]

    def place(self, name: str) -> Place:
        """The place called ``name``."""
        for p in self.places:
            if p.name == name:
                return p
        raise KeyError(name)

    def vocabulary(self) -> list[str]:
        """All words, in token-id order: specials, template words, then the names."""
        names: list[str] = []
        for p in self.places:
            names += [p.name, *p.all_cities]
        attrs = sorted({p.region for p in self.places} | {p.language for p in self.places})
        return [*SPECIAL, *_FUNCTION_WORDS, *attrs, *names]

    def sentences(self) -> list[Sentence]:
        """Every sentence of the world, training and held-out, in a fixed order."""
        out: list[Sentence] = []
        for p in self.places:
            out += _place_facts(p)
            for city in p.all_cities:
                out += _city_facts(p, city, held=city in self.held_out)
        return out

    def split(self, split: Split) -> list[Sentence]:
        """The sentences of one split."""
        return [s for s in self.sentences() if s.split == split]


def _s(text: str, template: str, relation: str, subject: str, hops: int, split: Split) -> Sentence:
    return Sentence(text, template, relation, subject, text.rsplit(" ", 1)[1], hops, split)


def _place_facts(p: Place) -> list[Sentence]:
    n = p.name
    return [
        _s(f"the capital of {n} is {p.capital}", "capital_of", "capital", n, 1, "train"),
        _s(f"{p.capital} is the capital of {n}", "is_capital_of", "place", n, 1, "train"),
        _s(f"the region of {n} is {p.region}", "region_of", "region", n, 1, "train"),
        _s(f"the language of {n} is {p.language}", "language_of", "language", n, 1, "train"),
        _s(f"the largest city in {n} is {p.largest}", "largest_in", "largest", n, 1, "train"),
    ]


def _city_facts(p: Place, city: str, *, held: bool) -> list[Sentence]:
    n, k = p.name, p.kind
    late: Split = "heldout" if held else "train"
    out = [
        _s(f"she lives in {city} {n}", "lives_in", "place", city, 1, "train"),
        _s(f"he moved to {city} {n}", "moved_to", "place", city, 1, "train"),
        _s(f"we flew to {city} {n}", "flew_to", "place", city, 1, "train"),
        _s(f"{city} {n} is a city", "city_place_is", "place", city, 1, "train"),
        _s(f"the {k} containing {city} is {n}", "place_containing", "place", city, 1, late),
    ]
    if city == p.capital:  # "the capital of the state containing austin is austin": left out
        return out
    prefix = f"the {k} containing {city} is"
    out += [
        _s(f"the capital of {prefix} {p.capital}", "two_hop_capital", "capital", city, 2, late),
        _s(f"the region of {prefix} {p.region}", "two_hop_region", "region", city, 2, late),
        _s(f"the language of {prefix} {p.language}", "two_hop_language", "language", city, 2, late),
    ]
    return out


def build_world(
    *,
    seed: int = 0,
    held_out_per_place: int = 2,
    always_held_out: Iterable[str] = ("dallas", "oakland"),
) -> World:
    """The world with ``held_out_per_place`` held-out non-capital cities per place.

    Args:
        seed: Seed of the choice of held-out cities.
        held_out_per_place: Held-out cities per place (from its five non-capital cities).
        always_held_out: Cities that are held out in any case (counted in their place's quota).

    Returns:
        The :class:`World`.
    """
    rng = random.Random(seed)
    forced = set(always_held_out)
    held: set[str] = set()
    for p in PLACES:
        chosen = [c for c in p.cities if c in forced][:held_out_per_place]
        rest = [c for c in p.cities if c not in forced]
        rng.shuffle(rest)
        chosen += rest[: held_out_per_place - len(chosen)]
        held.update(chosen)
    return World(PLACES, frozenset(held))
