"""Noun phrases from real caption strings, through the fallback that needs no spaCy model."""

from __future__ import annotations

import sys
import types

import pytest

from samseg_core import nouns
from samseg_core.nouns import (
    clean_class_name,
    merge_class_names,
    normalize_phrase,
    noun_phrases,
    noun_phrases_batch,
    singularize,
)


@pytest.fixture(autouse=True)
def _fresh_spacy_lookup():
    nouns.spacy_pipeline.cache_clear()
    yield
    nouns.spacy_pipeline.cache_clear()


def test_articles_verbs_and_prepositions_are_dropped():
    assert noun_phrases("a man riding a horse on a beach") == ["man", "horse", "beach"]


def test_plural_nouns_become_singular_but_grass_keeps_its_s():
    assert noun_phrases("two dogs playing with a frisbee in the grass") == ["dog", "frisbee", "grass"]


def test_es_plurals_participles_and_quantifiers():
    assert noun_phrases("there are some buses parked next to the buildings") == ["bus", "building"]


def test_noun_compounds_stay_one_phrase():
    assert noun_phrases("a traffic light next to a red fire hydrant") == ["traffic light", "fire hydrant"]


def test_duplicates_are_merged_in_order_of_appearance():
    assert noun_phrases("a dog and two dogs chasing a cat and the dog") == ["dog", "cat"]


def test_caption_boilerplate_is_not_a_class():
    assert noun_phrases("a close up of a picture of a plate of food") == ["plate", "food"]


def test_possessive_separates_owner_and_object():
    assert noun_phrases("a man's tennis rackets") == ["man", "tennis racket"]


def test_words_repeated_in_a_row_count_once():
    assert noun_phrases("sky sky sky") == ["sky"]


@pytest.mark.parametrize(
    ("plural", "singular"),
    [
        ("people", "person"),
        ("men", "man"),
        ("children", "child"),
        ("knives", "knife"),
        ("firemen", "fireman"),
    ],
)
def test_irregular_plurals(plural, singular):
    assert singularize(plural) == singular


@pytest.mark.parametrize(
    ("plural", "singular"),
    [
        ("puppies", "puppy"),
        ("glasses", "glass"),
        ("boxes", "box"),
        ("benches", "bench"),
        ("dishes", "dish"),
        ("houses", "house"),
        ("horses", "horse"),
    ],
)
def test_regular_plural_rules(plural, singular):
    assert singularize(plural) == singular


@pytest.mark.parametrize("word", ["glass", "bus", "grass", "cactus", "tennis", "sheep"])
def test_singular_words_ending_in_s_are_kept(word):
    assert singularize(word) == word


def test_normalize_phrase_lowercases_and_drops_determiners():
    assert normalize_phrase("The Two Dogs") == "dog"


def test_segmenter_labels_are_cleaned():
    assert [clean_class_name(n) for n in ("wall-other-merged", "building, edifice", "traffic_light")] == [
        "wall",
        "building",
        "traffic light",
    ]


def test_batch_gives_each_captions_phrases():
    captions = ["a cat on a sofa", "", "three red cars"]
    assert noun_phrases_batch(captions) == [["cat", "sofa"], [], ["car"]]


def test_spacy_without_an_english_model_falls_back(monkeypatch):
    def load(name, **kwargs):
        raise OSError(f"[E050] Can't find model '{name}'")

    monkeypatch.setitem(sys.modules, "spacy", types.SimpleNamespace(load=load))
    assert nouns.spacy_pipeline() is None
    assert noun_phrases("a man riding a horse") == ["man", "horse"]


def test_requiring_spacy_without_it_raises(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy -> ImportError
    with pytest.raises(RuntimeError, match="spaCy"):
        noun_phrases("a dog", use_spacy=True)


def test_a_name_with_commas_stays_one_class_name():
    assert normalize_phrase("Windowpanes, Window") == "windowpane, window"
    assert merge_class_names(["windowpane, window", "window", "windowpane,window"]) == [
        "windowpane, window",
        "window",
    ]
