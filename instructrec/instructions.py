"""InstructRec instructions: preference (P) x intention (I) x task form (T).

P0 none, P1 implicit (history, most recent last, at most 20 items), P2 explicit
(a stated taste built from the history's dominant genres). I0 none, I2 specific
(the target's genres, as the paper's category labels). Task form: matching.

The model reads a history through item vectors, not through BERT: the text
BERT sees carries the placeholder HISTORY where a person would read titles
(`render` puts the titles back). Leakage rule: an intention names the
target's attributes, never its title or id.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from instructrec.split import Catalogue, SplitData

HISTORY = "[history]"
TASK = "matching"

# Placeholders: {history} {taste} {genres} {noun} {nouns}
TEMPLATES: dict[str, tuple[str, ...]] = {
    "P1/I0": (
        "The user has enjoyed these {nouns}, most recent last: {history}. Which {noun} will they pick next?",
        "Here is my history: {history}. Recommend the next {noun} for me.",
        "Based on the {nouns} I engaged with recently ({history}), what should I choose now?",
        "Given this sequence of {nouns}: {history}, predict the one the user is most likely to want next.",
        "I recently went through {history}. What is a good {noun} to follow these?",
        "User history: {history}. Suggest a {noun} this user will like.",
    ),
    "P2/I0": (
        "I really like {taste} {nouns}. What would you recommend?",
        "You are a search engine and you meet a user's query: {taste}. Please respond by selecting a {noun}.",
        "My favourite kinds of {nouns} are {taste}. Suggest one for me.",
        "Recommend a {noun} to someone who loves {taste}.",
        "As a fan of {taste}, which {noun} should I pick?",
    ),
    "P0/I2": (
        "I want a {genres} {noun}.",
        "Find me a {noun} in these categories: {genres}.",
        "Show me {genres} {nouns}.",
        "I'm in the mood for something {genres}.",
    ),
    "P1/I2": (
        "I have enjoyed {history}. Now I'm looking for a {genres} {noun}.",
        "The user engaged with these {nouns}: {history}. They now ask for: {genres}. What should they get?",
        "Given my history ({history}), recommend a {noun} with these categories: {genres}.",
        "After {history}, I'd like something {genres}.",
        "History: {history}. Request: a {genres} {noun}. Pick the best match.",
    ),
    "P2/I2": (
        "I usually like {taste}, but today I want a {genres} {noun}.",
        "As a fan of {taste}, find me a {noun} that is {genres}.",
        "My taste: {taste}. My request: a {genres} {noun}.",
        "Someone who loves {taste} asks for a {genres} {noun}. What do you suggest?",
    ),
}
TYPES = tuple(TEMPLATES)
TRAIN_MIX: dict[str, float] = {"P1/I0": 0.35, "P1/I2": 0.25, "P2/I0": 0.1, "P2/I2": 0.1, "P0/I2": 0.2}


@dataclass(frozen=True)
class Instruction:
    type: str  # "P1/I0", ...
    template: str  # e.g. "P1/I0#3"
    text: str  # what BERT reads (history as the HISTORY placeholder)
    history: tuple[int, ...] = ()  # item indices, most recent last; empty unless P1

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
    """P2: the history's dominant genres, most frequent first (ties by name)."""
    counts = Counter(g for idx in history for g in catalogue.genres_of(int(idx)))
    return tuple(g for g, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top])


def needs(type_: str) -> tuple[bool, bool, bool]:
    """(history, taste, target genres) a type needs."""
    p, i = type_.split("/")
    return p == "P1", p == "P2", i == "I2"


def make_instruction(
    type_: str,
    template: int,
    catalogue: Catalogue,
    history: np.ndarray,
    target: int | None,
    max_history: int,
) -> Instruction | None:
    """Fill one template; None when the type cannot be expressed (no genres)."""
    use_history, use_taste, use_genres = needs(type_)
    fields = {"noun": catalogue.noun, "nouns": plural(catalogue.noun), "history": HISTORY}
    if use_taste:
        taste = stated_taste(history[-50:], catalogue)
        if not taste:
            return None
        fields["taste"] = join_words(taste)
    if use_genres:
        genres = catalogue.genres_of(int(target)) if target else ()
        if not genres:
            return None
        fields["genres"] = join_words(genres)
    if use_history and len(history) == 0:
        return None
    templates = TEMPLATES[type_]
    k = template % len(templates)
    hist = tuple(int(i) for i in history[-max_history:]) if use_history else ()
    return Instruction(type_, f"{type_}#{k}", templates[k].format(**fields), hist)


def free_text_instruction(text: str, history: np.ndarray, max_history: int, catalogue: Catalogue) -> Instruction:
    """A user's own request (CLI, feedback), read next to their history when there is one."""
    if len(history):
        body = f"My history: {HISTORY}. My request: {text.strip()}"
        return Instruction("P1/free", "free", body, tuple(int(i) for i in history[-max_history:]))
    return Instruction("P0/free", "free", text.strip())


def render(instruction: Instruction, catalogue: Catalogue) -> str:
    """The instruction as a person reads it: history titles instead of the placeholder."""
    titles = "; ".join(catalogue.title(i) for i in instruction.history)
    return instruction.text.replace(HISTORY, titles)


@dataclass
class Examples:
    """Columnar training examples; texts are deduplicated (BERT reads each once)."""

    user: np.ndarray  # [n]
    target: np.ndarray  # [n] item index
    history: np.ndarray  # [n, max_history] left-padded with 0
    text_id: np.ndarray  # [n] index into texts
    types: np.ndarray  # [n] instruction type
    templates: np.ndarray  # [n] template id
    label: np.ndarray  # [n] +1 like (pull), -1 dislike (push)
    weight: np.ndarray  # [n]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.target)

    def subset(self, rows: np.ndarray) -> Examples:
        return Examples(
            self.user[rows], self.target[rows], self.history[rows], self.text_id[rows], self.types[rows],
            self.templates[rows], self.label[rows], self.weight[rows], self.texts,
        )


class ExampleBuilder:
    """Accumulates instructions into `Examples`, interning texts."""

    def __init__(self, max_history: int):
        self.max_history = max_history
        self.rows: list[tuple] = []
        self.text_index: dict[str, int] = {}

    def add(self, user: int, target: int, ins: Instruction, label: float = 1.0, weight: float = 1.0) -> None:
        tid = self.text_index.setdefault(ins.text, len(self.text_index))
        self.rows.append((user, target, ins.history, tid, ins.type, ins.template, label, weight))

    def build(self) -> Examples:
        history = pad_histories([row[2] for row in self.rows], self.max_history)
        col = list(zip(*self.rows, strict=True)) if self.rows else [()] * 8
        return Examples(
            user=np.asarray(col[0], dtype=np.int64),
            target=np.asarray(col[1], dtype=np.int64),
            history=history,
            text_id=np.asarray(col[3], dtype=np.int64),
            types=np.asarray(col[4], dtype=object),
            templates=np.asarray(col[5], dtype=object),
            label=np.asarray(col[6], dtype=np.float32),
            weight=np.asarray(col[7], dtype=np.float32),
            texts=list(self.text_index),
        )


def sample_type(rng: np.random.Generator, mix: dict[str, float]) -> str:
    types = list(mix)
    p = np.asarray([mix[t] for t in types])
    return types[rng.choice(len(types), p=p / p.sum())]


def training_examples(split: SplitData, max_history: int, seed: int, mix: dict[str, float] | None = None) -> Examples:
    """One instruction per train position (next-item), type drawn from the mix."""
    mix = mix or TRAIN_MIX
    rng = np.random.default_rng(seed)
    builder = ExampleBuilder(max_history)
    for u, seq in enumerate(split.train):
        for t in range(1, len(seq)):
            ins = None
            while ins is None:  # fall back to history-only when genres are missing
                type_ = sample_type(rng, mix)
                ins = make_instruction(type_, int(rng.integers(1 << 30)), split.catalogue, seq[:t], int(seq[t]), max_history)
                if ins is None:
                    ins = make_instruction("P1/I0", int(rng.integers(1 << 30)), split.catalogue, seq[:t], None, max_history)
            builder.add(u, int(seq[t]), ins)
    return builder.build()
