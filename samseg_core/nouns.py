"""Noun phrases from image captions, normalised into class names (spaCy when available, else a rule fallback).

With spaCy and an English pipeline (``en_core_web_sm`` or any ``en_core_web_*``) installed, phrases are spaCy's
noun chunks. Otherwise — spaCy missing, or installed without an English model — a fallback that needs no
download is used:

1. lower-case and split into words (letters, inner hyphens and apostrophes; possessive ``'s`` dropped);
2. drop words from closed lists: determiners, quantifiers and number words, pronouns, prepositions,
   conjunctions, auxiliaries and common caption verbs, adverbs, colour/size/quality adjectives, and caption
   boilerplate (``picture``, ``close``, ``front``, ``group``, ``background`` ...); words ending in ``-ing``,
   ``-ed`` or ``-ly`` are taken for verbs/adverbs unless they are known nouns (``building``, ``bed``, ``family``);
3. runs of adjacent kept words form one phrase (noun compounds: ``traffic light``, ``tennis racket``), a word
   repeated at once counts once, and a run longer than three words is taken for a list of single nouns;
4. the last word of each phrase is singularised with rules (see :func:`singularize`).

Both paths end in :func:`normalize_phrase`: lower case, determiners dropped, singular head, and duplicates merged
in order of first appearance. The fallback cannot tell an unknown adjective from a noun, so ``"a shiny car"``
gives ``"shiny car"``; CLIP, which ranks the candidates afterwards, copes with such phrases.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "clean_class_name",
    "merge_class_names",
    "noun_phrases",
    "noun_phrases_batch",
    "normalize_phrase",
    "singularize",
    "spacy_pipeline",
]

_DETERMINERS = frozenset(
    "a an the this that these those some any each every either neither no another other such what which whose "
    "all both half several many much few more most less least enough various certain own same".split()
)
_NUMBERS = frozenset(
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen twenty thirty forty fifty hundred dozen dozens first second third single double".split()
)
_PRONOUNS = frozenset(
    "i me my mine we us our ours you your yours he him his she her hers it its they them their theirs "
    "myself yourself himself herself itself ourselves themselves who whom someone something somebody "
    "anyone anything everyone everything nobody nothing one ones there here".split()
)
_PREPOSITIONS = frozenset(
    "of on in at by with without within into onto upon from to toward towards through across along around "
    "about above below under underneath beneath over behind beside besides between among amongst near "
    "next against inside outside off out up down before after during while like than as per via past "
    "throughout beyond".split()
)
_CONJUNCTIONS = frozenset(
    "and or but nor so yet if then because although though whether while where when".split()
)
_AUXILIARIES = frozenset(
    "is are was were be been being am has have had having do does did done can could will would shall "
    "should may might must isn't aren't wasn't don't doesn't there's it's".split()
)
# Finite caption verbs that the -ing/-ed rules miss (the -s forms would otherwise singularise into nouns).
_VERBS = frozenset(
    "sit sits sat stand stands stood hold holds held ride rides rode walk walks run runs ran lie lies lay "
    "look looks play plays eat eats ate fly flies flew swim swims jump jumps wait waits drive drives drove "
    "carry carries wear wears wore hang hangs hung show shows seem seems appear appears contain contains "
    "go goes went get gets got make makes made take takes took lean leans graze grazes stare stares "
    "rest rests sleep sleeps slept fill fills cover covers park parks stack stacks line lines lined "
    "face faces pose poses watch watches talk talks smile smiles read reads use uses keep keeps put puts "
    "set sets topped filled covered parked stacked piled surrounded made shown seen taken".split()
)
_ADVERBS = frozenset(
    "very really quite too also just only not together away back again still even almost nearly "
    "there here somewhere outside inside indoors outdoors upstairs downstairs".split()
)
_ADJECTIVES = frozenset(
    "red blue green yellow white black brown gray grey orange pink purple silver golden gold dark bright "
    "colorful colourful large small big little tiny huge giant tall short long wide narrow thick thin "
    "old new young empty full open closed wooden different nice beautiful pretty cute busy sunny cloudy "
    "blurry dirty clean lush tasty delicious fresh hot cold wet dry high low clear shiny striped "
    "several various other same top bottom".split()
)
# Nouns that captions use as frames or positions rather than as the object shown.
_BOILERPLATE = frozenset(
    "picture pictures image images photo photos photograph photographs view close closeup front side sides "
    "middle background foreground group groups bunch couple pair pairs lot lots number variety kind sort "
    "type piece pieces part parts area scene shot way day time".split()
)
_STOPWORDS = (
    _DETERMINERS
    | _NUMBERS
    | _PRONOUNS
    | _PREPOSITIONS
    | _CONJUNCTIONS
    | _AUXILIARIES
    | _VERBS
    | _ADVERBS
    | _ADJECTIVES
    | _BOILERPLATE
)
_DROPPED_PHRASE_WORDS = _DETERMINERS | _NUMBERS | _PRONOUNS

# Nouns that the -ing / -ed / -ly verb and adverb rules must keep.
_NOUNS_ING = frozenset(
    "building buildings ceiling ceilings painting paintings clothing railing railings awning awnings ring "
    "rings king kings wing wings thing things string strings swing swings spring springs evening morning "
    "ping pudding puddings stocking stockings wedding ceiling icing frosting topping toppings sibling "
    "siblings duckling ducklings dumpling dumplings sling bedding lighting crossing crossings parking "
    "sewing landing".split()
)
_NOUNS_ED = frozenset(
    "bed beds shed sheds sled sleds seed seeds weed weeds steed reed reeds breed feed sofa-bed".split()
)
_NOUNS_LY = frozenset("family lily belly jelly butterfly dragonfly fly bully rally trolley".split())

_IRREGULAR_PLURALS = {
    "people": "person",
    "men": "man",
    "women": "woman",
    "children": "child",
    "feet": "foot",
    "teeth": "tooth",
    "geese": "goose",
    "mice": "mouse",
    "oxen": "ox",
    "dice": "die",
    "knives": "knife",
    "wives": "wife",
    "lives": "life",
    "leaves": "leaf",
    "wolves": "wolf",
    "shelves": "shelf",
    "loaves": "loaf",
    "halves": "half",
    "calves": "calf",
    "scarves": "scarf",
    "thieves": "thief",
    "elves": "elf",
    "buses": "bus",
    "busses": "bus",
    "viruses": "virus",
    "cactuses": "cactus",
    "cacti": "cactus",
    "octopuses": "octopus",
    "circuses": "circus",
    "campuses": "campus",
    "walruses": "walrus",
    "tomatoes": "tomato",
    "potatoes": "potato",
    "heroes": "hero",
    "mangoes": "mango",
    "volcanoes": "volcano",
    "dominoes": "domino",
    "torpedoes": "torpedo",
    "movies": "movie",
    "cookies": "cookie",
    "pies": "pie",
    "ties": "tie",
    "brownies": "brownie",
    "smoothies": "smoothie",
    "zombies": "zombie",
    "selfies": "selfie",
    "mustaches": "mustache",
    "moustaches": "moustache",
    "headaches": "headache",
    "avalanches": "avalanche",
    "niches": "niche",
}
# Words ending in s that are singular already (or have no singular form worth using).
_UNINFLECTED = frozenset(
    "glass grass bus gas lens news series species sheep deer fish aircraft tennis pants jeans shorts "
    "scissors trousers binoculars canvas atlas christmas texas chaos bias iris axis chassis "
    "mattress dress cross moss class boss".split()
)
# A longer run of content words is a list missing its commas ("dogs cats birds"), not one compound.
_MAX_COMPOUND = 3
_WORD = re.compile(r"[a-z]+(?:[-'][a-z]+)*")


def singularize(word: str) -> str:
    """Returns the singular of an English noun by rule (lower-cased input expected).

    Irregular plurals come from a table (people→person, men→man, children→child, knives→knife, buses→bus);
    words ending in ``-ss``, ``-us`` or ``-is`` and uninflected words (glass, grass, sheep, series) are kept;
    ``-ies``→``-y``; ``-sses``/``-xes``/``-ches``/``-shes``/``-zzes`` drop ``es``; ``-men``→``-man``
    (firemen); any other ``-s`` drops the ``s`` (houses→house, horses→horse).
    """
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if len(word) <= 3 or word in _UNINFLECTED or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("men") and word not in ("omen", "semen", "specimen", "abdomen", "stamen"):
        return word[:-3] + "man"
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "ches", "shes", "zzes")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def _is_content_word(word: str) -> bool:
    if word in _STOPWORDS or len(word) < 2 or word.isdigit():
        return False
    if word.endswith("ing") and word not in _NOUNS_ING:
        return False
    if word.endswith("ed") and len(word) > 4 and word not in _NOUNS_ED:
        return False
    return not (word.endswith("ly") and len(word) > 4 and word not in _NOUNS_LY)


def _words(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    return [w[:-2] if w.endswith("'s") else w for w in words]


def normalize_phrase(phrase: str) -> str:
    """Returns a phrase as a class name: lower case, determiners/quantifiers dropped, last word singular.

    ``"The Two Dogs"`` → ``"dog"``; ``"a pair of"`` → ``""`` (nothing left). A name with commas stays one
    name, each synonym normalised: ``"Windowpanes, Window"`` → ``"windowpane, window"``.
    """
    synonyms = (_normalize_words(part) for part in str(phrase).split(","))
    return ", ".join(name for name in synonyms if name)


def _normalize_words(text: str) -> str:
    words = [w for w in _words(text) if w not in _DROPPED_PHRASE_WORDS]
    if not words:
        return ""
    return " ".join([*words[:-1], singularize(words[-1])])


def merge_class_names(names: Iterable[str]) -> list[str]:
    """Returns the names normalised (:func:`normalize_phrase`), empty ones dropped, duplicates merged in order."""
    merged = dict.fromkeys(n for n in (normalize_phrase(name) for name in names) if n)
    return list(merged)


def clean_class_name(name: str) -> str:
    """Returns a segmenter label as a readable class name: first synonym, COCO's ``-merged``/``-other`` dropped.

    ``"wall-other-merged"`` → ``"wall"``; ``"building, edifice"`` → ``"building"``; ``"traffic_light"`` →
    ``"traffic light"``. Plural labels stay plural here (candidates are singularised when merged).
    """
    first = str(name).split(",")[0].strip().lower()
    first = re.sub(r"(-merged|-other|-stuff)+$", "", first)
    return re.sub(r"[_\-]+", " ", first).strip()


@functools.cache
def spacy_pipeline() -> Any | None:
    """Returns a loaded English spaCy pipeline, or None when spaCy or an English model is not installed."""
    try:
        import spacy
    except ImportError:
        return None
    for name in ("en_core_web_sm", "en_core_web_md", "en_core_web_lg", "en_core_web_trf"):
        try:
            return spacy.load(name, disable=["ner"])
        except Exception:  # OSError when the model package is absent; anything else: treat as absent too
            continue
    return None


def _fallback_phrases(caption: str) -> list[str]:
    phrases: list[list[str]] = [[]]
    for word in _WORD.findall(caption.lower()):
        possessive = word.endswith("'s")
        word = word[:-2] if possessive else word
        if _is_content_word(word):
            phrases[-1].append(word)
        if phrases[-1] and (possessive or not _is_content_word(word)):
            phrases.append([])  # "a man's racket": the owner and the object are two phrases
    out = []
    for words in phrases:
        words = [w for k, w in enumerate(words) if k == 0 or w != words[k - 1]]  # "sky sky" -> "sky"
        out.extend([" ".join(words)] if len(words) <= _MAX_COMPOUND else words)
    return [phrase for phrase in out if phrase]


def _doc_phrases(doc: Any) -> list[str]:
    phrases = []
    for chunk in doc.noun_chunks:
        tokens = [t for t in chunk if t.pos_ not in ("DET", "PRON", "NUM", "PUNCT")]
        if not tokens or tokens[-1].text.lower() in _BOILERPLATE:
            continue
        head = tokens[-1].lemma_ if tokens[-1].tag_ in ("NNS", "NNPS") else tokens[-1].text
        phrases.append(" ".join([*(t.text for t in tokens[:-1]), head]))
    return phrases


def noun_phrases(caption: str, *, use_spacy: bool | None = None) -> list[str]:
    """Returns the normalised noun phrases of a caption, duplicates merged, in order of appearance.

    Args:
        caption: a caption such as ``"two dogs playing with a frisbee in the grass"``.
        use_spacy: None uses spaCy when an English pipeline is installed; False forces the rule fallback;
            True requires spaCy (raises RuntimeError when it is unavailable).
    """
    nlp = spacy_pipeline() if use_spacy is not False else None
    if use_spacy and nlp is None:
        raise RuntimeError("spaCy with an English pipeline (e.g. en_core_web_sm) is not installed")
    phrases = _doc_phrases(nlp(caption)) if nlp is not None else _fallback_phrases(caption)
    return merge_class_names(phrases)


def noun_phrases_batch(captions: Sequence[str], *, use_spacy: bool | None = None) -> list[list[str]]:
    """Returns :func:`noun_phrases` of each caption (spaCy's ``pipe`` batches them when it is used)."""
    nlp = spacy_pipeline() if use_spacy is not False else None
    if use_spacy and nlp is None:
        raise RuntimeError("spaCy with an English pipeline (e.g. en_core_web_sm) is not installed")
    if nlp is None:
        return [merge_class_names(_fallback_phrases(c)) for c in captions]
    return [merge_class_names(_doc_phrases(doc)) for doc in nlp.pipe(list(captions))]
