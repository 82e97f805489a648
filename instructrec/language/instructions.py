"""InstructRec instructions: preference (P) x intention (I) x task form.

P0 none, P1 implicit (history, most recent last: the model reads up to
`max_history` items, the words show the 20 most recent titles), P2 explicit (a stated taste: the history's dominant genres).
I0 none, I1 vague (the everyday mood of one of the target's genres, from a
fixed lexicon: no LLM), I2 specific (all the target's genres, as the paper's
category labels). Task forms: matching (rank the whole catalogue) and
reranking (choose among given candidates: the 1+9 protocol).

Each type has one held-out template that training never uses; evaluation
scores it separately (instruction-following generalisation).

Beyond the paper's types, training also reads the requests people write next
(REQUEST_TEMPLATES: an era, a genre in an era or two genres at once, a film
named from the history; a refused genre only where `data.instruction_mix`
asks for it), in the frame the service gives a person's own words;
instructrec.evaluation.request_eval measures them on other wordings.

The model reads a history through item vectors, not through BERT: the text
BERT sees carries the placeholder HISTORY where a person would read titles
(`render` puts the titles back). Leakage rule: an intention describes the
target's attributes, never its title or id.
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

from instructrec.data.split import Catalogue, SplitData
from instructrec.language.understand import BLACK_AND_WHITE, DECADE_WORDS, OLD_YEARS, RECENT_YEARS, SILENT

HISTORY = "[history]"
TITLES_SHOWN = 20  # history titles in an instruction's words, as the paper; the history tower may read more items
CANDIDATES = "[candidates]"
MATCHING, RERANKING = "matching", "reranking"


@dataclass(frozen=True)
class Template:
    text: str  # placeholders: {history} {taste} {genres} {mood} {noun} {nouns} {candidates}
    held_out: bool = False  # never used in training

    @property
    def form(self) -> str:
        return RERANKING if "{candidates}" in self.text else MATCHING


def _t(*texts: str, held_out: str) -> tuple[Template, ...]:
    return tuple(Template(t) for t in texts) + (Template(held_out, held_out=True),)


TEMPLATES: dict[str, tuple[Template, ...]] = {
    "P1/I0": _t(
        "The user has enjoyed these {nouns}, most recent last: {history}. Which {noun} will they pick next?",
        "Here is my history: {history}. Recommend the next {noun} for me.",
        "Based on the {nouns} I engaged with recently ({history}), what should I choose now?",
        "Given this sequence of {nouns}: {history}, predict the one the user is most likely to want next.",
        "User history: {history}. Suggest a {noun} this user will like.",
        "The user has interacted with {history}. Select the {noun} they will want next from the candidates: {candidates}.",
        "You know my history ({history}). Rank these {nouns} for me: {candidates}.",
        held_out="I recently went through {history}. What is a good {noun} to follow these?",
    ),
    "P2/I0": _t(
        "I really like {taste} {nouns}. What would you recommend?",
        "You are a search engine and you meet a user's query: {taste}. Please respond by selecting a {noun}.",
        "My favourite kinds of {nouns} are {taste}. Suggest one for me.",
        "Recommend a {noun} to someone who loves {taste}.",
        "You are a search engine and you meet a user's query: {taste}. Please respond by selecting from the candidates: "
        "{candidates}.",
        held_out="As a fan of {taste}, which {noun} should I pick?",
    ),
    "P0/I1": _t(
        "I want {mood}.",
        "Can you find me {mood}?",
        "Tonight I'm after {mood}. Pick one of these: {candidates}.",
        held_out="Recommend {mood}, please.",
    ),
    "P0/I2": _t(
        "I want a {genres} {noun}.",
        "Find me a {noun} in these categories: {genres}.",
        "Show me {genres} {nouns}.",
        "Which of these is a {genres} {noun}? {candidates}",
        held_out="I'm in the mood for something {genres}.",
    ),
    "P1/I1": _t(
        "I have enjoyed {history}. Now I want {mood}.",
        "My history: {history}. Today I'm looking for {mood}.",
        "After {history}, recommend {mood}.",
        "Given what I liked ({history}), choose {mood} from the candidates: {candidates}.",
        held_out="Considering {history}, what would be {mood} for me?",
    ),
    "P1/I2": _t(
        "I have enjoyed {history}. Now I'm looking for a {genres} {noun}.",
        "The user engaged with these {nouns}: {history}. They now ask for: {genres}. What should they get?",
        "Given my history ({history}), recommend a {noun} with these categories: {genres}.",
        "History: {history}. Request: a {genres} {noun}. Pick the best match.",
        "History: {history}. I want {genres}. Rank the candidates: {candidates}.",
        held_out="After {history}, I'd like something {genres}.",
    ),
    "P2/I1": _t(
        "I usually like {taste}. Right now I want {mood}.",
        "As a fan of {taste}, recommend {mood}.",
        "My taste is {taste}; pick {mood} among these: {candidates}.",
        held_out="Someone who loves {taste} asks for {mood}. What do you suggest?",
    ),
    "P2/I2": _t(
        "I usually like {taste}, but today I want a {genres} {noun}.",
        "As a fan of {taste}, find me a {noun} that is {genres}.",
        "My taste: {taste}. My request: a {genres} {noun}.",
        "I like {taste} and want a {genres} {noun}. Choose from: {candidates}.",
        held_out="Someone who loves {taste} asks for a {genres} {noun}. What do you suggest?",
    ),
}
TYPES = tuple(TEMPLATES)
# The headline type (history only) takes the largest share; the requests people write next (REQUEST_TEMPLATES)
# 9.5%, read beside a history as P1/I0 is; the rest the other types. "P1/negation" is left out by default: with
# frozen sentence features "not in the mood for X" reads like "in the mood for X"; in the mix it took the learned
# scorer's refused-genre share from 99.5% to 60.5% (no request: 50%), but the positive wordings fell (ML-100k P0/I2
# held-out 0.4300 -> 0.3773). The rules apply a refusal and take its words out of what the encoder reads.
TRAIN_MIX: dict[str, float] = {
    "P1/I0": 0.405,
    "P1/era": 0.035,
    "P1/composite": 0.035,
    "P1/title": 0.025,
    "P1/I1": 0.08,
    "P1/I2": 0.1,
    "P2/I0": 0.06,
    "P2/I1": 0.04,
    "P2/I2": 0.06,
    "P0/I1": 0.08,
    "P0/I2": 0.08,
}
HELD_OUT = "held-out"
HISTORY_ONLY = "P1/I0"  # the wording that says nothing beyond the history: what a type reads with its words removed


def worded(type_: str) -> bool:
    """Whether the type's words carry anything beyond its history: a stated taste (P2) or an intention (I1, I2).

    P1/I0 (and P0/I0, were it a type) say nothing a history-only model could not read; "P1/I0/held-out" is P1/I0.
    """
    p, i = type_.removesuffix(f"/{HELD_OUT}").split("/")
    return p == "P2" or i != "I0"


def history_only_wording(noun: str, held_out: bool = False) -> tuple[str, str]:
    """(template name, text) of the first history-only matching template of the seen or the held-out set."""
    for k, t in enumerate(templates_of(HISTORY_ONLY, held_out)):
        if t.form == MATCHING:
            name = f"{HISTORY_ONLY}#{HELD_OUT}{k}" if held_out else f"{HISTORY_ONLY}#{k}"
            return name, t.text.format(noun=noun, nouns=plural(noun), history=HISTORY, candidates=CANDIDATES)
    raise ValueError(f"no matching {HISTORY_ONLY} template")


# I1: each genre's everyday mood, worded without the genre's name where English allows.
MOODS: dict[str, tuple[str, ...]] = {
    "Action": ("something packed with action", "an adrenaline rush", "something with big fights and chases"),
    "Adventure": ("an adventure to get lost in", "something with a grand journey", "an escapist quest"),
    "Animation": ("something drawn or animated", "a cartoon to unwind with"),
    "Children's": ("something the whole family can watch", "something the kids will enjoy"),
    "Comedy": ("something to make me laugh", "something light and funny", "a feel-good laugh"),
    "Crime": ("a story about criminals and the law", "something with gangsters or a heist"),
    "Documentary": ("something real and informative", "a true story told straight"),
    "Drama": ("something moving and serious", "a story with emotional depth"),
    "Fantasy": ("something magical", "a trip to another world"),
    "Film-Noir": ("something dark and moody from the old days", "a shadowy, cynical detective story"),
    "Horror": ("something scary", "something that will keep me up at night"),
    "Musical": ("something full of songs", "something I can sing along to"),
    "Mystery": ("a puzzle to figure out", "a whodunit"),
    "Romance": ("something about falling in love", "a love story"),
    "Sci-Fi": ("something futuristic", "something set in space or the future"),
    "Thriller": ("something suspenseful", "an edge-of-the-seat watch"),
    "War": ("something about soldiers and battle", "a story set in wartime"),
    "Western": ("something with cowboys", "a frontier story"),
}


def mood(genre: str, choice: int) -> str:
    """A vague wording of one genre; genres outside the lexicon get a generic vague phrase."""
    phrases = MOODS.get(genre, (f"something in the spirit of {genre.lower()}",))
    return phrases[choice % len(phrases)]


@dataclass(frozen=True)
class Instruction:
    type: str  # "P1/I0", ...
    template: str  # e.g. "P1/I0#3"
    text: str  # what BERT reads (history as the HISTORY placeholder)
    history: tuple[int, ...] = ()  # item indices, most recent last; empty unless P1
    form: str = MATCHING

    @property
    def preference(self) -> str:
        return self.type.split("/")[0]

    @property
    def intention(self) -> str:
        return self.type.split("/")[1]


def pad_histories(histories: list[tuple[int, ...]], max_history: int) -> np.ndarray:
    """[n, max_history] item indices, left-padded with 0, most recent item in the last slot."""
    out = np.zeros((len(histories), max_history), dtype=np.int64)
    for r, history in enumerate(histories):
        if history:
            out[r, max_history - len(history) :] = history
    return out


def plural(noun: str) -> str:
    return noun if noun.endswith("s") else f"{noun}s"


def join_words(words: tuple[str, ...] | list[str]) -> str:
    words = list(words)
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def stated_taste(history: np.ndarray, catalogue: Catalogue, top: int = 2) -> tuple[str, ...]:
    """P2: the history's dominant genres, most frequent first (ties by name: the count table's columns are in name
    order and the sort is stable)."""
    counts = catalogue.genre_counts[np.asarray(history, dtype=np.int64)].sum(axis=0, dtype=np.int64)
    order = np.argsort(-counts, kind="stable")[:top]
    return tuple(catalogue.genre_names[g] for g in order.tolist() if counts[g] > 0)


@cache
def needs(type_: str) -> tuple[bool, bool, bool]:
    """(history, taste, target genres) a type needs."""
    p, i = type_.split("/")
    return p == "P1", p == "P2", i in ("I1", "I2")


@cache
def templates_of(type_: str, held_out: bool = False) -> tuple[Template, ...]:
    """The type's training templates, or its held-out ones."""
    return tuple(t for t in TEMPLATES[type_] if t.held_out == held_out)


def make_instruction(
    type_: str,
    template: int,
    catalogue: Catalogue,
    history: np.ndarray,
    target: int | None,
    max_history: int,
    held_out: bool = False,
) -> Instruction | None:
    """Fill one template (chosen by `template`, which also picks I1's genre and wording).

    None when the type cannot be expressed (no genres, or no history for P1).
    """
    use_history, use_taste, use_genres = needs(type_)
    if use_history and len(history) == 0:
        return None
    taste: tuple[str, ...] = ()
    if use_taste:
        taste = stated_taste(history[-50:], catalogue)
        if not taste:
            return None
    n = len(templates_of(type_, held_out))
    k, choice = template % n, template // n
    genres, vague = (), ""
    if use_genres:
        genres = catalogue.genres_of(int(target)) if target else ()
        if not genres:
            return None
        vague = mood(genres[choice % len(genres)], choice // len(genres))
    name, text, form = _filled(type_, held_out, k, catalogue.noun, taste, tuple(genres), vague)
    hist = tuple(np.asarray(history[-max_history:]).tolist()) if use_history else ()
    return Instruction(type_, name, text, hist, form)


@lru_cache(maxsize=1 << 16)
def _filled(
    type_: str, held_out: bool, k: int, noun: str, taste: tuple[str, ...], genres: tuple[str, ...], vague: str
) -> tuple[str, str, str]:
    """(template name, text, form): a few thousand distinct fillings over millions of training positions."""
    fields = {"noun": noun, "nouns": plural(noun), "history": HISTORY, "candidates": CANDIDATES}
    fields |= {"taste": join_words(taste), "genres": join_words(genres), "mood": vague}
    template = templates_of(type_, held_out)[k]
    return f"{type_}#{HELD_OUT}{k}" if held_out else f"{type_}#{k}", template.text.format(**fields), template.form


def free_text_instruction(text: str, history: np.ndarray, max_history: int, catalogue: Catalogue) -> Instruction:
    """A user's own request (CLI, feedback), read next to their history when there is one."""
    if len(history):
        body = REQUEST_FRAME.format(history=HISTORY, request=text.strip())
        return Instruction("P1/free", "free", body, tuple(int(i) for i in history[-max_history:]))
    return Instruction("P0/free", "free", text.strip())


# -- requests as people write them (docs/requests.md) ---------------------------------------------------------
# Era, composite, negation and a named title, each read beside the history in the frame the service gives a
# person's own words (REQUEST_FRAME). Built at training positions from the target's metadata; the evaluation's
# wordings (request_eval.WORDINGS) are never used here (a test holds the two sets apart).
REQUEST_FRAME = "My history: {history}. My request: {request}"
REQUEST_TEMPLATES: dict[str, tuple[str, ...]] = {
    "P1/era": (
        "Recommend a {noun} {when}.",
        "Something {when}, please.",
        "I'd like to see a {noun} {when}.",
        "Show me {nouns} {when}.",
        "Find me a good one {when}.",
    ),
    "P1/composite": (
        "A {genre} {noun} {when}.",
        "Looking for {genre} {when}.",
        "Show me {genre} {nouns} {when}.",
        "A {noun} that mixes {genre} with {genre2}.",
        "Something {genre} and {genre2} at once.",
        "I want {genre} plus {genre2}.",
    ),
    "P1/negation": (
        "Anything but {genre}.",
        "Not in the mood for {genre}.",
        "Skip the {genre}, please.",
        "No {genre} tonight.",
        "I don't want {genre}.",
        "Something other than {genre}.",
        "Please, no more {genre}.",
        "Recommend a {noun}, just not {genre}.",
    ),
    "P1/title": (
        "Something like {title}.",
        "{Nouns} similar to {title}, please.",
        "In the vein of {title}.",
        "Give me something that reminds me of {title}.",
        "Recommend something in the style of {title}.",
    ),
}
REQUEST_TYPES = tuple(REQUEST_TEMPLATES)
_DECADE_NAMES = {decade: word for word, decade in DECADE_WORDS.items() if " " not in word}


def era_phrase(year: int, newest: int, rng: np.random.Generator) -> str:
    """A period that holds `year`, worded as people do (the readings `understand` gives the same words)."""
    decade = year // 10 * 10
    part = "early" if year - decade <= 3 else "late" if year - decade >= 6 else "mid"
    lo = year - int(rng.integers(0, 6))
    hi = lo + 5 + int(rng.integers(0, 11))
    forms = [
        f"from the {decade}s",
        f"from the {str(decade)[2:]}s",
        f"made in the {part} {decade}s",
        f"released from {lo} to {hi}",
        f"made {lo}-{str(hi)[2:]}",
        f"made before {year + 1 + int(rng.integers(0, 6))}",
        f"released after {year - 1 - int(rng.integers(0, 6))}",
    ]
    if decade in _DECADE_NAMES:
        forms.append(f"from the {_DECADE_NAMES[decade]}")
    if year <= newest - OLD_YEARS:
        forms += ["that is an old classic", "that counts as vintage"]
    if year <= BLACK_AND_WHITE:
        forms.append("in black and white")
    if year <= SILENT:
        forms.append("from the silent era")
    if year >= newest - RECENT_YEARS:
        forms += ["that is a recent release", "among the latest releases"]
    return forms[int(rng.integers(0, len(forms)))]


def spellings(title: str, year: int | None, rng: np.random.Generator) -> list[str]:
    """The title as people type it: article in front with the year, lower case without it, without the article,
    and with one typo (two neighbouring letters swapped in its longest word)."""
    m = re.match(r"^(.*), (The|A|An)$", title)
    front = f"{m.group(2)} {m.group(1)}" if m else title
    bare = m.group(1) if m else re.sub(r"^(The|A|An) ", "", title)
    words = front.split()
    longest = max(range(len(words)), key=lambda i: len(words[i]))
    w = words[longest]
    if len(w) >= 4:
        j = int(rng.integers(1, len(w) - 2))
        words[longest] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return [f"{front} ({year})" if year else front, front.lower(), bare, " ".join(words)]


def _closest_in_history(history: np.ndarray, target: int, catalogue: Catalogue) -> int:
    """The recent history's film whose genres are closest to the target's (Jaccard), never the target; 0 if none."""
    recent = np.asarray(history[-50:], dtype=np.int64)[::-1]  # the most recent first wins a tie (argmax: the first)
    got, want = catalogue.genre_counts[recent] > 0, catalogue.genre_counts[target] > 0
    union = (got | want).sum(axis=1)
    score = np.divide((got & want).sum(axis=1), union, out=np.zeros(len(recent)), where=union > 0)
    score[recent == target] = 0.0
    best = int(np.argmax(score)) if len(recent) else 0
    return int(recent[best]) if len(recent) and score[best] > 0 else 0


def _refused_genre(history: np.ndarray, target: int, catalogue: Catalogue, rng: np.random.Generator) -> str | None:
    """A genre the target lacks, drawn by how often the recent history shows it (what people refuse is what
    they would otherwise be shown)."""
    own = set(catalogue.genres_of(target))
    counts = Counter(g for i in history[-20:] for g in catalogue.genres_of(int(i)) if g not in own)
    if not counts:
        return None
    genres = sorted(counts)
    p = np.asarray([counts[g] for g in genres], dtype=float)
    return genres[int(rng.choice(len(genres), p=p / p.sum()))]


def request_instruction(
    type_: str, rng: np.random.Generator, catalogue: Catalogue, history: np.ndarray, target: int, max_history: int
) -> Instruction | None:
    """One request of a REQUEST_TYPES class that is true of `target`; None where the metadata cannot say it."""
    if len(history) == 0:
        return None
    noun = catalogue.noun
    fields = {"noun": noun, "nouns": plural(noun), "Nouns": plural(noun).capitalize()}
    genres, year = catalogue.genres_of(target), catalogue.year_of(target)
    templates = REQUEST_TEMPLATES[type_]
    k = int(rng.integers(0, len(templates)))
    if type_ == "P1/era" or (type_ == "P1/composite" and "{when}" in templates[k]):
        if not year or (type_ == "P1/composite" and not genres):
            return None
        fields["when"] = era_phrase(year, catalogue.newest_year or year, rng)
    if type_ == "P1/composite":
        if len(genres) < (1 if "{when}" in templates[k] else 2):
            return None
        pair = rng.choice(len(genres), size=min(2, len(genres)), replace=False)
        fields["genre"] = genres[int(pair[0])].lower()
        fields["genre2"] = genres[int(pair[-1])].lower()
    elif type_ == "P1/negation":
        refused = _refused_genre(history, target, catalogue, rng)
        if refused is None:
            return None
        fields["genre"] = refused.lower()
    elif type_ == "P1/title":
        named = _closest_in_history(history, target, catalogue)
        if not named:
            return None
        forms = spellings(catalogue.title(named), catalogue.year_of(named), rng)
        fields["title"] = forms[int(rng.integers(0, len(forms)))]
    request = templates[k].format(**fields)
    hist = tuple(np.asarray(history[-max_history:]).tolist())
    return Instruction(type_, f"{type_}#{k}", REQUEST_FRAME.format(history=HISTORY, request=request), hist)


def render(instruction: Instruction, catalogue: Catalogue, candidates: tuple[int, ...] = ()) -> str:
    """The instruction as a person reads it: titles instead of the placeholders (the 20 most recent, as the paper)."""
    titles = "; ".join(catalogue.title(i) for i in instruction.history[-TITLES_SHOWN:])
    text = instruction.text.replace(HISTORY, titles)
    return text.replace(CANDIDATES, "; ".join(catalogue.title(i) for i in candidates) or "(the candidates)")


@dataclass
class Examples:
    """Training examples packed in history windows; texts are deduplicated (BERT reads each once).

    Window w holds items seq[w] (left-padded with 0). The example at slot t, where
    weight[w, t] > 0, asks for target seq[w, t + 1] given the instruction text_id[w, t]
    and, where use_history[w, t], the history seq[w, :t + 1]. A causal model scores
    all slots of a window in one pass.
    """

    user: np.ndarray  # [W]
    seq: np.ndarray  # [W, H + 1] item indices
    text_id: np.ndarray  # [W, H] index into texts, -1 where no example
    use_history: np.ndarray  # [W, H] bool
    types: np.ndarray  # [W, H] instruction type ("" where no example)
    templates: np.ndarray  # [W, H] template id
    label: np.ndarray  # [W, H] +1 like (pull), -1 dislike (push)
    weight: np.ndarray  # [W, H] 0 where no example
    texts: list[str]

    def __len__(self) -> int:
        """Number of windows (the unit batches are drawn in)."""
        return len(self.seq)

    @property
    def n_examples(self) -> int:
        return int((self.weight > 0).sum())

    @property
    def target(self) -> np.ndarray:
        """Every example's target item."""
        return self.seq[:, 1:][self.weight > 0]

    def subset(self, rows: np.ndarray) -> Examples:
        return Examples(
            self.user[rows],
            self.seq[rows],
            self.text_id[rows],
            self.use_history[rows],
            self.types[rows],
            self.templates[rows],
            self.label[rows],
            self.weight[rows],
            self.texts,
        )


class ExampleBuilder:
    """Accumulates instructions into `Examples`, interning texts.

    Flat typed arrays, not the Instruction objects: 10M examples would otherwise hold 10M
    objects with their history tuples (gigabytes) until `build`.
    """

    def __init__(self, max_history: int):
        self.max_history = max_history
        self.users, self.items, self.lengths = array("q"), array("q"), array("q")  # per window; items flat
        self.rows, self.slots, self.text_ids = array("q"), array("q"), array("q")  # per example
        self.use_history, self.labels, self.weights = array("b"), array("f"), array("f")
        self.types: list[str] = []  # per example; the few distinct strings are shared, not copied
        self.templates: list[str] = []
        self.text_index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, user: int, target: int, ins: Instruction, label: float = 1.0, weight: float = 1.0) -> None:
        """One example as its own window: the instruction's history, then the target."""
        items = ins.history[-self.max_history :] + (target,)
        self.add_window(user, items, [(len(items) - 2, ins, label, weight)])

    def add_window(self, user: int, items, examples: list[tuple[int, Instruction, float, float]]) -> None:
        """items: at most max_history + 1; examples: (t, instruction, label, weight), target items[t + 1]."""
        assert len(items) <= self.max_history + 1, "a window holds at most max_history + 1 items"
        row, offset = len(self.lengths), self.max_history + 1 - len(items)
        self.users.append(user)
        self.items.extend(items.tolist() if isinstance(items, np.ndarray) else items)
        self.lengths.append(len(items))
        for t, ins, label, weight in examples:
            self.rows.append(row)
            self.slots.append(offset + t)
            self.text_ids.append(self.text_index.setdefault(ins.text, len(self.text_index)))
            self.use_history.append(bool(ins.history))
            self.types.append(ins.type)
            self.templates.append(ins.template)
            self.labels.append(label)
            self.weights.append(weight)

    def build(self) -> Examples:
        h, w = self.max_history, len(self.lengths)
        lengths = np.frombuffer(self.lengths, dtype=np.int64)
        seq = np.zeros((w, h + 1), dtype=np.int64)
        cols = np.arange(h + 1) >= (h + 1 - lengths)[:, None]  # left padding: a window's items fill its tail
        seq[cols] = np.frombuffer(self.items, dtype=np.int64)
        at = (np.frombuffer(self.rows, dtype=np.int64), np.frombuffer(self.slots, dtype=np.int64))
        text_id = np.full((w, h), -1, dtype=np.int64)
        text_id[at] = np.frombuffer(self.text_ids, dtype=np.int64)
        use_history = np.zeros((w, h), dtype=bool)
        use_history[at] = np.frombuffer(self.use_history, dtype=np.int8).astype(bool)
        types = np.full((w, h), "", dtype=object)
        types[at] = np.asarray(self.types, dtype=object)
        templates = np.full((w, h), "", dtype=object)
        templates[at] = np.asarray(self.templates, dtype=object)
        label = np.zeros((w, h), dtype=np.float32)
        label[at] = np.frombuffer(self.labels, dtype=np.float32)
        weight = np.zeros((w, h), dtype=np.float32)
        weight[at] = np.frombuffer(self.weights, dtype=np.float32)
        users = np.frombuffer(self.users, dtype=np.int64).copy()
        return Examples(users, seq, text_id, use_history, types, templates, label, weight, list(self.text_index))


def sample_type(rng: np.random.Generator, mix: dict[str, float]) -> str:
    """One type, drawn as `rng.choice(len(mix), p=...)` draws it (one uniform against the cumulative shares: the
    same draws), without validating the shares again at every training position."""
    types, cdf = _mix_cdf(tuple(mix.items()))
    return types[bisect_right(cdf, rng.random())]  # = searchsorted(cdf, u, side="right")


@cache
def _mix_cdf(mix: tuple[tuple[str, float], ...]) -> tuple[tuple[str, ...], list[float]]:
    p = np.asarray([share for _, share in mix], dtype=np.float64)
    if len(p) == 0 or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"an instruction mix needs finite, non-negative shares with a positive sum, got {dict(mix)}")
    cdf = (p / p.sum()).cumsum()
    cdf /= cdf[-1]
    return tuple(t for t, _ in mix), cdf.tolist()


def sampled_instruction(
    rng: np.random.Generator,
    mix: dict[str, float],
    catalogue: Catalogue,
    history: np.ndarray,
    target: int,
    max_history: int,
) -> Instruction:
    """A type drawn from the mix; history-only where the type cannot be expressed (history must be non-empty)."""
    type_ = sample_type(rng, mix)
    if type_ in REQUEST_TEMPLATES:
        ins = request_instruction(type_, rng, catalogue, history, target, max_history)
    else:
        ins = make_instruction(type_, int(rng.integers(1 << 30)), catalogue, history, target, max_history)
    ins = ins or make_instruction("P1/I0", int(rng.integers(1 << 30)), catalogue, history, None, max_history)
    assert ins is not None, "P1/I0 is expressible for any non-empty history"
    return ins


def windows(seq: np.ndarray, max_history: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """(start, first, end): windows seq[start:end] of at most max_history + 1 items, cut from the sequence's end
    every `stride` items; targets seq[first:end] are that window's examples, each exactly once over all windows.

    stride = max_history gives SASRec's disjoint windows (early targets see short histories);
    a smaller stride gives every target at least max_history - stride + 1 items of history, at the cost of
    reading each item (max_history / stride) times.
    """
    stride = stride or max_history
    out = []
    for end in range(len(seq), 1, -stride):
        start = max(0, end - max_history - 1)
        first = start + 1 if start == 0 else max(start + 1, end - stride)
        out.append((start, first, end))
        if start == 0:
            break
    return out


def training_examples(
    split: SplitData, max_history: int, seed: int, mix: dict[str, float] | None = None, stride: int | None = None
) -> Examples:
    """One instruction per train position (next-item), type drawn from the mix; packed in windows."""
    mix = mix or TRAIN_MIX
    rng = np.random.default_rng(seed)
    builder = ExampleBuilder(max_history)
    for u, seq in enumerate(split.train):
        for start, first, end in windows(seq, max_history, stride):
            examples = []
            for t in range(first, end):  # target seq[t], history seq[:t]
                ins = sampled_instruction(rng, mix, split.catalogue, seq[:t], int(seq[t]), max_history)
                examples.append((t - 1 - start, ins, 1.0, 1.0))
            builder.add_window(u, seq[start:end], examples)
    return builder.build()
