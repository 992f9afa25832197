"""The built-in eval text is fixed (vendored), and what is evaluated is fingerprinted for cache keys."""

import hashlib

from workbench.core.data import EvalData, builtin_text, load_eval
from workbench.core.recipe import EvalSettings


def test_builtin_text_is_the_vendored_snapshot_whatever_the_python():
    text = builtin_text()
    # sha256 of CPython 3.11.7's pydoc topics joined as builtin_text() joins them: numbers stay comparable
    # between machines with different Pythons (3.12 ships different topics).
    assert len(text) == 465047
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == DIGEST


def test_digest_follows_the_content_not_the_name():
    a, b = EvalData("builtin", text="one text"), EvalData("builtin", text="another text")
    assert a.digest != b.digest and a.digest == EvalData("builtin", text="one text").digest
    causal = load_eval(EvalSettings(), "causal-lm")
    encoder = load_eval(EvalSettings(), "encoder")
    assert causal.digest != encoder.digest and len(causal.digest) == 24


DIGEST = "d9dc35bce5ab1a24"
