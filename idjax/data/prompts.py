"""Prompts from quantised attributes, and their word-level tokenizer.

A prompt names only coarse attributes (skin tone bin, hair colour name and
style, eye colour name, marks), never the continuous parameters, so text alone
cannot pin an identity down: that gap is what reference images close.
"""

import re

import numpy as np

_NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight")
_SKIN = ("pale", "light", "tan", "brown", "dark")
_HAIR_COLOURS = ("black", "brown", "blond", "red", "grey", "white", "blue", "pink", "green", "purple")
_HAIR_STYLES = ("bald", "short", "long", "bangs", "curly")
_EYES = ("brown", "blue", "green", "grey", "amber", "violet")
_GRAMMAR = ("a", "person", "people", "with", "and", "skin", "hair", "eyes", "head", "glasses",
            "beard", "moustache", "freckles")


def _vocabulary():
  words = ["<pad>", "<unk>"]
  for w in _GRAMMAR + _NUMBERS + _SKIN + _HAIR_COLOURS + _HAIR_STYLES + _EYES:
    if w not in words:
      words.append(w)
  return tuple(words)


VOCABULARY: tuple[str, ...] = _vocabulary()  # index 0 = "<pad>", 1 = "<unk>"
_WORD_ID = {w: i for i, w in enumerate(VOCABULARY)}


def _join(parts):
  return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def describe_one(attributes: dict) -> str:
  """'a person with ...' from one `IdentityParams.attributes()` dict."""
  style, colour = attributes["hair_style"], attributes["hair_colour"]
  if style == "bald":
    hair = "a bald head"
  elif style == "bangs":
    hair = f"{colour} hair with bangs"
  else:
    hair = f"{style} {colour} hair"
  parts = [f"{attributes['skin']} skin", hair, f"{attributes['eyes']} eyes"]
  if attributes["glasses"]:
    parts.append("glasses")
  if attributes["beard"] != "none":
    parts.append(f"a {attributes['beard']}")
  if attributes["freckles"]:
    parts.append("freckles")
  return "a person with " + _join(parts)


def describe(characters: list[dict]) -> str:
  """The prompt for a clip: one description, or 'two people: ... and ...'."""
  texts = [describe_one(a) for a in characters]
  if len(texts) == 1:
    return texts[0]
  return f"{_NUMBERS[len(texts) - 1]} people: " + _join(texts)


def tokenize(prompt: str, max_len: int) -> np.ndarray:
  """Word ids, int32 [max_len]: lower-cased words, 1 for unknown, 0-padded, truncated."""
  words = re.findall(r"[a-z0-9<>]+", prompt.lower())[:max_len]
  out = np.zeros((max_len,), np.int32)
  out[:len(words)] = [_WORD_ID.get(w, 1) for w in words]
  return out
