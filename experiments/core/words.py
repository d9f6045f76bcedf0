"""Words for one-line messages about a user's input: a value quoted short, a message kept
on one line, and the closest name to a misspelt one ("did you mean learning_rate?").
"""

from __future__ import annotations

import re
import reprlib
from typing import Any


class _Short(reprlib.Repr):
    """repr, bounded: a value in an error message stays short and cheap to make, however
    big or deep it is (YAML aliases can nest a 500-byte file into gigabytes)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxdict, self.maxtuple = 2, 5, 5, 5
        self.maxstring, self.maxother, self.maxlong = 60, 60, 40

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:  # Python refuses to print ints of over 4,300 digits
            return f"<an integer of about {int(x.bit_length() * 0.30103)} digits>"
        return super().repr_int(x, level)


def show(value: Any) -> str:
    """A user's value, quoted for an error message."""
    return _Short().repr(value)


def number(v: Any) -> str:
    """A trained value as the terminal and the parent's description show it."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def one_line(message: str) -> str:
    """User text (keys, values, paths) may hold newlines or control characters: escape them
    so that an error is always exactly one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


# Words other tools use for this runner's: its held-out split is "test".
_SYNONYMS = {"val": "test", "valid": "test", "validation": "test", "eval": "test",
             "acc": "accuracy", "lr": "learning_rate", "bs": "batch_size"}


def did_you_mean(name: Any, options: tuple[str, ...] | list[str]) -> str:
    """' (did you mean X?)' for the closest option, or '' when none is close.

    Closeness counts the ways people shorten and misspell names: initials (`lr`), a word
    of the name (`batch`), a prefix, and difflib's ratio for typos (`learning_rte`), for
    the name as written and with other tools' words put in this runner's (`val` -> test).
    """
    import difflib

    words = str(name).strip().lower().replace("-", "_").split("_")
    texts = {"_".join(words), "_".join(_SYNONYMS.get(w, w) for w in words)} - {""}

    def score(option: str, text: str) -> float:
        parts = option.replace(".", "_").split("_")
        if text == "".join(p[0] for p in parts if p):
            return 2.0
        ratio = difflib.SequenceMatcher(None, text, option).ratio()
        if text in parts or option.startswith(text) or text.startswith(option):
            return 1.0 + ratio  # the closer of two prefixes wins (log_uniform_value(s))
        return ratio

    scored = [(max(score(o, t) for t in texts), o) for o in options] if texts else []
    best = max(scored, default=(0.0, ""), key=lambda pair: pair[0])
    return f" (did you mean {best[1]}?)" if best[0] >= 0.6 else ""


def masked(text: str) -> str:
    """A storage URL (or a message holding one) without its password: it goes to
    terminals, logs and CI output."""
    text = re.sub(r"(://[^/:@\s]*:)[^/@\s]*@", r"\1***@", text)  # user:password@host
    return re.sub(r"([?&](?:password|passwd|pass|pwd)=)[^&\s]*?(?=&|\s|:\s|$)", r"\1***",
                  text, flags=re.I)
