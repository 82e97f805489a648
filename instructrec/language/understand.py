"""Request understanding: what a request says for certain (refused genres, years, named titles), read by rules.

The learned scorer follows a request that names what it wants (a genre, a mood),
but an encoder places "no drama" next to "drama" and cannot read a year or a
title it never saw in training. What can be known for certain is parsed here and
applied to the learned score as constraints (`constrain`):

- genres named without negation: the list prefers items of those genres (all of
  them when joined by "and", any when joined by "or");
- genres refused ("anything but G", "no G", "not in the mood for G", "G but not H"):
  items of a refused genre go to the bottom;
- years: a decade in digits or words ("the 80s", "the eighties", "early 90s"), a
  range ("between 1970 and 1985", "1970-85"), "before 1960", "since 1990", a single
  year, and the words "old", "classic", "black-and-white", "silent", "recent";
- titles after "like", "similar to", "in the vein of" ... matched fuzzily (articles
  moved, case, a missing year, a typo): "the shining" finds "Shining, The".

Negation is a small state machine over the words of a clause: each cue ("not",
"no", "without", "anything but", "n't" ...) flips it, so "not without comedy" asks
for comedy; "nothing but", "not only" and "don't mind" flip nothing; a clause
boundary ("," "." "but" ...) resets it. What the rules take out (refused genres,
titles) is removed from the words the encoder reads; the rest of the request goes
to it unchanged.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from instructrec.data.split import Catalogue

EARLIEST, LATEST = 0, 9999  # open ends of a year range
OLD_YEARS = 30  # "old" and "classic": at least this many years before the catalogue's newest item
RECENT_YEARS = 2  # "recent": within this many years of the catalogue's newest item
BLACK_AND_WHITE, SILENT = 1959, 1929  # the last years of each era (the common reading, not a per-film fact)
TITLE_MATCH = 0.88  # least similarity (difflib ratio) of a fuzzy title match
TITLE_WORDS = 12  # longest title phrase tried after a cue

# close synonyms of MovieLens' genre names (a genre the catalogue lacks is never offered)
SYNONYMS: dict[str, tuple[str, ...]] = {
    "Sci-Fi": ("science fiction", "science-fiction", "sci fi", "scifi", "sci-fi"),
    "Children's": ("children's", "childrens", "children", "kids", "kid's", "family"),
    "Film-Noir": ("film noir", "film-noir", "noir"),
    "Animation": ("animation", "animated", "cartoon", "cartoons", "anime"),
    "Comedy": ("comedy", "comedies", "comedic"),
    "Romance": ("romance", "romances", "romantic"),
    "Documentary": ("documentary", "documentaries", "docs"),
    "Mystery": ("mystery", "mysteries", "whodunit", "whodunits"),
    "Drama": ("drama", "dramas"),
    "Musical": ("musical", "musicals"),
    "Thriller": ("thriller", "thrillers"),
    "Western": ("western", "westerns"),
    "Horror": ("horror",),
    "Fantasy": ("fantasy", "fantasies"),
    "Adventure": ("adventure", "adventures"),
    "Crime": ("crime",),
    "War": ("war",),
    "Action": ("action",),
}
DECADE_WORDS = {
    "twenties": 1920,
    "thirties": 1930,
    "forties": 1940,
    "fifties": 1950,
    "sixties": 1960,
    "seventies": 1970,
    "eighties": 1980,
    "nineties": 1990,
    "noughties": 2000,
    "two thousands": 2000,
}
NEGATORS = {
    "not", "no", "never", "without", "except", "excluding", "exclude", "skip", "avoid", "hate", "hates",
    "dislike", "neither", "none", "nothing", "minus", "dont", "doesnt", "didnt", "cant", "wont", "isnt", "arent",
}  # fmt: skip
NEGATING_PAIRS = {
    ("anything", "but"), ("everything", "but"), ("all", "but"), ("other", "than"), ("rather", "than"),
    ("instead", "of"), ("sick", "of"), ("tired", "of"), ("enough", "of"), ("away", "from"), ("spare", "me"),
    ("leave", "out"), ("no", "more"),
}  # fmt: skip
NEUTRAL_PAIRS = {("nothing", "but"), ("not", "only"), ("not", "just"), ("no", "matter")}  # flip nothing
NEUTRAL_AFTER = {"mind", "care", "know", "sure", "decide", "matter"}  # "don't mind comedy" refuses nothing
BOUNDARIES = {",", ".", ";", "!", "?", "but", "though", "although", "however", "yet"}
STOPWORDS = {
    "a", "an", "the", "some", "something", "anything", "one", "ones", "movie", "movies", "film", "films", "it",
    "this", "that", "these", "those", "me", "my", "i", "to", "and", "or", "please", "more", "stuff", "item", "items",
}  # fmt: skip
TITLE_CUE = re.compile(
    r"(?:\bsimilar to|\bin the (?:vein|style|spirit) of|\balong the lines of|\breminds? me of|\bsuch as"
    r"|\bthe likes of|\b(?:movies?|films?|something|anything|nothing|stuff|more|ones?|items?|books?|titles?|shows?)"
    r"\s+(?:just\s+|a bit\s+|a little\s+)?like|^\s*like|[,;.]\s*like|\bas good as)\s+"
)
WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[,.;!?]")
YEAR_RE = r"(1[89]\d\d|20\d\d)"


@dataclass(frozen=True)
class Understood:
    """What a request says for certain; empty fields mean the request said nothing of that kind."""

    genres: tuple[str, ...] = ()  # asked for
    all_genres: bool = True  # every asked genre at once ("comedy and romance"), or any ("comedy or romance")
    exclude_genres: tuple[str, ...] = ()
    years: tuple[int, int] | None = None  # inclusive; EARLIEST / LATEST for an open end
    exclude_years: tuple[tuple[int, int], ...] = ()
    like: tuple[int, ...] = ()  # catalogue indices of the titles named as examples
    unlike: tuple[int, ...] = ()  # titles named as what not to get ("nothing like X")
    unknown_titles: tuple[str, ...] = ()
    rest: str = ""  # the words left for the learned scorer
    notes: tuple[str, ...] = ()

    @property
    def constrains(self) -> bool:
        return bool(self.genres or self.exclude_genres or self.years or self.exclude_years or self.like or self.unlike)

    def to_dict(self, catalogue: Catalogue) -> dict:
        """The compact form a response shows: only what was understood."""
        out: dict = {}
        if self.genres:
            out["genres"] = list(self.genres)
            if len(self.genres) > 1:
                out["genres_match"] = "all" if self.all_genres else "any"
        if self.exclude_genres:
            out["exclude_genres"] = list(self.exclude_genres)
        if self.years:
            out["years"] = [
                None if self.years[0] == EARLIEST else self.years[0],
                None if self.years[1] == LATEST else self.years[1],
            ]
        if self.exclude_years:
            out["exclude_years"] = [list(r) for r in self.exclude_years]
        if self.like:
            out["like"] = [display_title(catalogue, i) for i in self.like]
        if self.unlike:
            out["unlike"] = [display_title(catalogue, i) for i in self.unlike]
        if self.unknown_titles:
            out["unknown_titles"] = list(self.unknown_titles)
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def display_title(catalogue: Catalogue, idx: int) -> str:
    """'Fargo (1996)': the title with its year where the catalogue knows it and the title does not say it."""
    title, year = catalogue.title(idx), catalogue.year_of(idx)
    return f"{title} ({year})" if year and not title.rstrip().endswith(")") else title


# -- titles ---------------------------------------------------------------------------------------------------
_ARTICLE_END = re.compile(r",\s*(the|a|an|les|la|le|l'|il|el|der|die|das|los|las)$")


def normalise_title(text: str) -> str:
    """Lower case, no accents, no bracketed parts (years, alternative titles), a trailing article moved to the
    front ("Shining, The" -> "the shining"), punctuation as spaces."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower().strip()
    text = re.sub(r"\s*\([^)]*\)", "", text).strip()
    m = _ARTICLE_END.search(text)
    if m:
        text = f"{m.group(1)} {text[: m.start()]}"
    return " ".join(re.sub(r"[^a-z0-9']+", " ", text).replace("'", "").split())


def _bare(norm: str) -> str:
    """Without a leading article: what a person may or may not say."""
    return re.sub(r"^(the|a|an) ", "", norm)


@dataclass
class TitleIndex:
    """Catalogue titles by their normalised forms, for exact and fuzzy lookup."""

    catalogue: Catalogue
    popularity: np.ndarray | None = None  # [n_items]: breaks ties between equal titles (remakes)
    exact: dict[str, list[int]] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for idx in range(1, self.catalogue.n_items + 1):
            norm = normalise_title(self.catalogue.title(idx))
            for key in {norm, _bare(norm)}:
                if key:
                    self.exact.setdefault(key, []).append(idx)
        self.keys = list(self.exact)

    def _best(self, ids: list[int], year: int | None) -> int:
        if year is not None:
            dated = [i for i in ids if self.catalogue.year_of(i) == year]
            ids = dated or ids
        if self.popularity is not None and len(ids) > 1:
            return max(ids, key=lambda i: (self.popularity[i - 1], -i))  # type: ignore[index]
        return ids[0]

    def find(self, phrase: str, fuzzy: bool = True) -> int | None:
        """The catalogue index of the title a phrase names, or None. A trailing year picks among equal titles,
        unless it belongs to the title ("Blues Brothers 2000")."""
        year_m = re.search(r"\(?\b" + YEAR_RE + r"\)?\s*$", phrase)
        readings: list[tuple[str, int | None]] = [(phrase, None)]
        if year_m and year_m.start() > 0:
            readings.insert(
                0 if year_m.group(0).startswith("(") else 1, (phrase[: year_m.start()], int(year_m.group(1)))
            )
        for text, year in readings:
            found = self._lookup(normalise_title(text), year, fuzzy)
            if found is not None:
                return found
        return None

    def _lookup(self, norm: str, year: int | None, fuzzy: bool) -> int | None:
        if not norm or set(norm.split()) <= STOPWORDS:
            return None
        bare = _bare(norm)
        for key in (norm, bare):
            if key in self.exact:
                return self._best(self.exact[key], year)
        if not fuzzy or len(bare) < 4:
            return None
        for key in difflib.get_close_matches(bare, self.keys, n=5, cutoff=0.6):
            if (
                difflib.SequenceMatcher(None, bare, key).ratio() >= TITLE_MATCH
                or _typos(bare, key) <= len(bare) // 8 + 1
            ):
                return self._best(self.exact[key], year)
        return None


def _typos(a: str, b: str) -> int:
    """Edits between two strings, a swap of neighbouring letters counting as one (optimal string alignment)."""
    if abs(len(a) - len(b)) > 2:
        return max(len(a), len(b))  # more than any tolerance
    prev2, prev = [], list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


# -- the parser -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Mention:
    start: int
    end: int
    kind: str  # genre | years | title
    value: object


def lexicon(catalogue: Catalogue) -> list[tuple[str, str]]:
    """(phrase, genre) for the catalogue's genres, longest phrase first."""
    present = sorted({g for gs in catalogue.genres for g in gs})
    pairs = set()
    for g in present:
        low = g.lower()
        forms = {low, low.replace("-", " "), low.replace("-", ""), low + "s", *SYNONYMS.get(g, ())}
        pairs |= {(f, g) for f in forms if f}
    return sorted(pairs, key=lambda p: (-len(p[0]), p[0]))


def _decade(word: str, qualifier: str | None) -> tuple[int, int]:
    base = int(word)
    lo, hi = base, base + 9
    if qualifier == "early":
        hi = base + 3
    elif qualifier == "mid":
        lo, hi = base + 3, base + 6
    elif qualifier == "late":
        lo = base + 6
    return lo, hi


def _two_digit_decade(d: str) -> int:
    n = int(d)
    return 2000 + n * 10 if n <= 1 else 1900 + n * 10


def _range_end(start: str, end: str) -> int:
    """A range's last year, written in full or by its last two digits ("1995-05" ends in 2005)."""
    if len(end) == 4:
        return int(end)
    year = int(start[:2] + end)
    return year + 100 if year < int(start) else year


def _year_mentions(text: str, newest: int | None) -> list[_Mention]:
    out: list[_Mention] = []

    def add(m: re.Match, lo: int, hi: int) -> None:
        out.append(_Mention(m.start(), m.end(), "years", (lo, hi)))

    q = r"(?:(early|mid|late)[\s-]+)?"
    for m in re.finditer(r"\b(?:between|from)\s+" + YEAR_RE + r"\s*(?:and|to|-|until|till)\s*(\d{2,4})\b", text):
        add(m, int(m.group(1)), _range_end(m.group(1), m.group(2)))
    for m in re.finditer(r"\b" + YEAR_RE + r"\s*(?:-|to)\s*(\d{2}|\d{4})\b", text):
        add(m, int(m.group(1)), _range_end(m.group(1), m.group(2)))
    for m in re.finditer(r"\b(before|pre|prior to|earlier than|older than|until|up to)[\s-]*" + YEAR_RE + r"\b", text):
        y = int(m.group(2))
        add(m, EARLIEST, y if m.group(1) in ("until", "up to") else y - 1)
    for m in re.finditer(
        r"\b(after|post|since|later than|newer than|from)[\s-]*" + YEAR_RE + r"(\s+on(?:wards?)?)?\b", text
    ):
        y = int(m.group(2))
        if m.group(1) == "from" and not m.group(3):
            add(m, y, y)
        else:
            add(m, y + 1 if m.group(1) in ("after", "post", "later than", "newer than") else y, LATEST)
    for m in re.finditer(r"\b" + q + r"(?:the\s+)?(1[89]\d|20\d)0'?s\b", text):  # 1980s
        add(m, *_decade(m.group(2) + "0", m.group(1)))
    for m in re.finditer(r"(?:\b|')" + q + r"(?:the\s+)?'?(\d)0'?s\b", text):  # 80s, '80s
        add(m, *_decade(str(_two_digit_decade(m.group(2))), m.group(1)))
    words = "|".join(DECADE_WORDS)
    for m in re.finditer(r"\b" + q + r"(?:the\s+)?(?:nineteen\s+)?(" + words + r")\b", text):
        add(m, *_decade(str(DECADE_WORDS[m.group(2)]), m.group(1)))
    for m in re.finditer(r"\bblack[\s-]+(?:and|&)[\s-]+white\b|\bb&w\b", text):
        add(m, EARLIEST, BLACK_AND_WHITE)
    for m in re.finditer(r"\bsilent\b", text):
        add(m, EARLIEST, SILENT)
    if newest is not None:
        for m in re.finditer(r"\b(?:old|older|classic|classics|vintage|golden age)\b", text):
            add(m, EARLIEST, newest - OLD_YEARS)
        for m in re.finditer(r"\b(?:recent|recently released|newest|latest|new releases?|brand new)\b", text):
            add(m, newest - RECENT_YEARS, LATEST)
    for m in re.finditer(r"\b(?:in|of|from the year|year)\s+" + YEAR_RE + r"\b", text):
        add(m, int(m.group(1)), int(m.group(1)))
    return out


def _title_mentions(text: str, titles: TitleIndex) -> tuple[list[_Mention], list[str]]:
    """Titles after a cue: the longest phrase (up to TITLE_WORDS words) that names a catalogue title, exact
    matches before fuzzy ones; "and" / "or" / "," after a title may start another."""
    found, unknown = [], []
    for cue in TITLE_CUE.finditer(text):
        pos = cue.end()
        while True:
            quoted = re.match(r"[\"'“‘]([^\"'”’]+)[\"'”’]", text[pos:])
            if quoted:
                idx = titles.find(quoted.group(1))
                if idx is None:
                    unknown.append(quoted.group(1))
                    break
                end = pos + quoted.end()
            else:
                words = list(re.finditer(r"[^\s,;.!?]+(?:\s*\(\d{4}\))?", text[pos:]))[:TITLE_WORDS]
                idx, end = None, pos
                for n in range(len(words), 0, -1):  # the longest phrase that names a title, exactly or nearly
                    phrase = text[pos : pos + words[n - 1].end()]
                    idx = titles.find(phrase, fuzzy=False)
                    idx = idx if idx is not None else titles.find(phrase)
                    if idx is not None:
                        end = pos + words[n - 1].end()
                        break
                if idx is None:
                    phrase = text[pos : pos + words[min(len(words), 4) - 1].end()] if words else ""
                    if phrase and not set(phrase.split()) <= STOPWORDS and not _starts_like_a_request(phrase):
                        unknown.append(phrase)
                    break
            found.append(_Mention(pos, end, "title", (idx, cue.start())))  # the cue's words stay readable
            more = re.match(r"\s*(?:,\s*)?(?:and|or|,)\s+", text[end:])
            if not more:
                break
            pos = end + more.end()
    return found, unknown


def _starts_like_a_request(phrase: str) -> bool:
    """'like a comedy', 'like something from the 80s': 'like' the verb, not a named title."""
    return bool(re.match(r"(a|an|some|something|anything|to|it|this|that|them|those|these)\b", phrase))


def _overlap(a: _Mention, b: _Mention) -> bool:
    return a.start < b.end and b.start < a.end


def _genre_mentions(text: str, lexicon: list[tuple[str, str]], taken: list[_Mention]) -> list[_Mention]:
    out: list[_Mention] = []
    for phrase, genre in lexicon:
        for m in re.finditer(r"(?<![a-z0-9'-])" + re.escape(phrase) + r"(?![a-z0-9'-])", text):
            mention = _Mention(m.start(), m.end(), "genre", genre)
            if not any(_overlap(mention, t) for t in taken + out):
                out.append(mention)
    return out


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"[’‘`]", "'", text)
    text = re.sub(r"\b(\w+)n't\b", r"\1 not", text)  # don't -> do not, can't -> ca not
    return text.replace("cannot", "can not")


TASTE_WORDS = {"usually", "fan", "fans", "favourite", "favorite", "favourites", "favorites", "typically", "normally",
               "generally", "love", "loves", "enjoy", "enjoys", "enjoyed", "taste", "tastes"}  # fmt: skip
TASTE_PAIRS = {("i", "like"), ("really", "like"), ("who", "likes"), ("i", "liked")}


@dataclass(frozen=True)
class _Reading:
    negated: bool  # refused ("no drama")
    taste: bool  # a stated taste ("I usually like drama"): the learned scorer's to weigh, not a constraint
    start: int  # where the phrase to take out starts (its negation cue, when refused)


def _readings(text: str, mentions: list[_Mention]) -> list[_Reading]:
    """How each mention is meant: a state machine over the words of each clause (see the module docstring)."""
    inside = [(m.start, m.end) for m in mentions]
    words = [(w.start(), w.group(0)) for w in WORD.finditer(text) if not any(a <= w.start() < b for a, b in inside)]
    events = sorted([(start, w, None) for start, w in words] + [(m.start, "", m) for m in mentions], key=lambda e: e[0])
    negated, taste, cue, out = False, False, -1, {}
    i = 0
    while i < len(events):
        start, word, mention = events[i]
        if mention is not None:
            out[id(mention)] = _Reading(negated, taste, cue if negated else mention.start)
            i += 1
            continue
        nxt = events[i + 1][1] if i + 1 < len(events) and events[i + 1][2] is None else None
        step = 1
        if (word, nxt) in NEUTRAL_PAIRS:
            step = 2
        elif (word, nxt) in NEGATING_PAIRS:
            negated, cue, step = not negated, start, 2
        elif (word, nxt) in TASTE_PAIRS or word in TASTE_WORDS:
            taste = True
        elif word in BOUNDARIES:
            negated, taste, cue = False, False, -1
        elif word in NEGATORS:
            after = [e[1] for e in events[i + 1 : i + 3] if e[2] is None]
            if not set(after) & NEUTRAL_AFTER:
                negated, cue = not negated, start
        i += step
    return [out[id(m)] for m in mentions]


def understand(
    request: str | None,
    catalogue: Catalogue,
    titles: TitleIndex | None = None,
    phrases: list[tuple[str, str]] | None = None,
) -> Understood:
    """Parse a request against a catalogue (its genres, years and titles)."""
    if not request or not request.strip():
        return Understood()
    text = _normalise(request)
    known_years = [y for y in catalogue.years if y]
    newest = max(known_years) if known_years else None
    titles = titles or TitleIndex(catalogue)
    title_mentions, unknown = _title_mentions(text, titles)
    years: list[_Mention] = []
    for m in sorted(_year_mentions(text, newest), key=lambda m: m.start - m.end):  # the longest reading first
        if not any(_overlap(m, o) for o in years + title_mentions):  # "like 1984" is a title
            years.append(m)
    genres = _genre_mentions(text, phrases if phrases is not None else lexicon(catalogue), years + title_mentions)
    mentions = sorted(years + title_mentions + genres, key=lambda m: m.start)
    notes = []
    want, refuse, year_in, year_out, like, unlike, removed = [], [], [], [], [], [], []
    for m, r in zip(mentions, _readings(text, mentions), strict=True):
        if m.kind == "genre" and not r.taste:
            (refuse if r.negated else want).append(m.value)
            if r.negated:
                removed.append((r.start, m.end))
        elif m.kind == "years":
            (year_out if r.negated else year_in).append(m.value)
        elif m.kind == "title":
            idx, cue = m.value  # pyright: ignore[reportGeneralTypeIssues]
            (unlike if r.negated else like).append(idx)
            removed.append((min(r.start, cue), m.end))
    if (year_in or year_out) and newest is None:
        notes.append("this catalogue has no release years: the years in the request were not applied")
        year_in, year_out = [], []
    for phrase in unknown:
        notes.append(f"no title in the catalogue matches '{phrase}'")
    want = [g for g in dict.fromkeys(want) if g not in refuse]
    joined_by_or = bool(re.search(r"\bor\b|\beither\b", text)) and len(want) > 1
    rest = _remove(request, text, removed)
    return Understood(
        genres=tuple(want),
        all_genres=not joined_by_or,
        exclude_genres=tuple(dict.fromkeys(refuse)),
        years=_intersect(year_in),
        exclude_years=tuple(dict.fromkeys(year_out)),
        like=tuple(dict.fromkeys(i for i in like if i is not None)),
        unlike=tuple(dict.fromkeys(i for i in unlike if i is not None)),
        unknown_titles=tuple(unknown),
        rest=rest,
        notes=tuple(notes),
    )


def _intersect(ranges: list[tuple[int, int]]) -> tuple[int, int] | None:
    """Several year mentions: the widest reading that keeps them all ("from the 80s, before 1985" -> 1980-1984);
    disjoint ones ("the 60s or the 80s") span both."""
    if not ranges:
        return None
    lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)
    if lo <= hi:
        return lo, hi
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def _remove(original: str, text: str, spans: list[tuple[int, int]]) -> str:
    """The request without the refused and title phrases (offsets of the normalised text; the normalisation only
    changes length at n't / cannot, so the normalised text is what is returned)."""
    if not spans:
        return original.strip()
    keep, last = [], 0
    for start, end in sorted(spans):
        keep.append(text[last : max(start, last)])
        last = max(last, end)
    keep.append(text[last:])
    rest = re.sub(r"\s+([,.;!?])", r"\1", " ".join("".join(keep).split()))
    rest = re.sub(r"^(?:[\s,.;!?]|\b(?:but|and|or)\b)+|(?:[\s,;]|\b(?:but|and|or)\b)+$", "", rest)
    words = (
        set(re.findall(r"[a-z0-9']+", rest))
        - STOPWORDS
        - NEGATORS
        - {"please", "want", "like", "would", "do", "i'm", "im", "just", "mood", "for", "in", "not", "but"}
    )
    return rest if words else ""


# -- applying it ----------------------------------------------------------------------------------------------
def violations(understood: Understood, catalogue: Catalogue) -> np.ndarray:
    """[n_items] how many of the request's constraints each item breaks (0: meets every one)."""
    n = catalogue.n_items
    out = np.zeros(n, dtype=np.int64)
    if understood.genres or understood.exclude_genres:
        has = {
            g: np.asarray([g in gs for gs in catalogue.genres])
            for g in {*understood.genres, *understood.exclude_genres}
        }
        if understood.genres:
            if understood.all_genres:
                out += sum((~has[g]).astype(np.int64) for g in understood.genres)
            else:
                out += ~np.logical_or.reduce([has[g] for g in understood.genres])
        for g in understood.exclude_genres:
            out += has[g]
    if understood.years or understood.exclude_years:
        years = np.asarray([y if y else -1 for y in catalogue.years], dtype=np.int64)
        if understood.years:
            lo, hi = understood.years
            out += ~((years >= lo) & (years <= hi) & (years > 0))
        for lo, hi in understood.exclude_years:
            out += (years >= lo) & (years <= hi)
    return out


def constrain(scores: np.ndarray, understood: Understood, catalogue: Catalogue) -> np.ndarray:
    """The learned scores ranked within constraint tiers: an item meeting every constraint above any that breaks
    one, fewer broken above more; the learned order within a tier. Blocked items (-inf) stay blocked.

    Tiers, not filters: a request nothing in the catalogue meets still gets a full list, closest first."""
    broken = violations(understood, catalogue)
    if not broken.any():
        return scores
    finite = np.isfinite(scores)
    if not finite.any():
        return scores
    span = float(scores[finite].max() - scores[finite].min()) + 1.0
    return np.where(finite, scores - span * broken, scores)
