"""Calibration and training data for optimizations (sensitivity, QAT, distillation, importance scores).

Taken from the *end* of the built-in text (Python's reference topics in reverse order), while the built-in
evaluation reads from the start (causal LM: the first ``token_budget`` tokens; encoders: the first topics'
query/document pairs). The two do not overlap unless an evaluation asks for most of the text (a causal-LM token
budget above ~50 k tokens, or more than ~60 encoder texts); ``overlap_note`` says so when it happens.
A user file (one text per paragraph) can replace the built-in text.

The text functions are torch-free; ``token_batches`` imports torch.
"""

from __future__ import annotations

from pathlib import Path

from workbench.core.errors import InputError


def _topics_reversed() -> list[tuple[str, str]]:
    from workbench.core.data import builtin_topics

    return builtin_topics()[::-1]


def calibration_text(source: str = "builtin") -> str:
    """One long text for causal-LM calibration/training."""
    if source and source != "builtin":
        return _read_user_text(source)
    return "\n\n".join(text.strip() for _, text in _topics_reversed())


def calibration_texts(n: int, source: str = "builtin", max_chars: int = 2000) -> list[str]:
    """``n`` texts for encoder/classifier calibration: alternating a topic's first paragraph (short, like a query)
    and the topic itself (long, like a document), from the last topics backwards."""
    if source and source != "builtin":
        paras = [p.strip() for p in _read_user_text(source).split("\n\n") if p.strip()]
        if len(paras) < 2:
            raise InputError(f"calibration data {source}: has fewer than 2 paragraphs; expected blank-line "
                             f"separated texts")
        return [p[:max_chars] for p in (paras * (n // len(paras) + 1))[:n]]
    out: list[str] = []
    for _, text in _topics_reversed():
        paras = [p.strip() for p in text.strip().split("\n\n") if len(p.strip()) >= 40]
        if not paras:
            continue
        out.append(paras[0][:max_chars])
        out.append(text.strip()[:max_chars])
        if len(out) >= n:
            break
    return out[:n]


def passages(n: int, min_chars: int = 450, max_chars: int = 900) -> list[str]:
    """Up to ``n`` passages of ``min_chars`` to ``max_chars`` characters: consecutive paragraphs of the built-in
    topics, from the last topic backwards (the calibration side), merged until long enough. About 700 exist; the
    chat turns a draft distils on pair them with instructions (``spec_head.chat_windows``)."""
    out: list[str] = []
    seen: set[str] = set()  # some topics repeat others' paragraphs (the compound statements, say)
    for _, text in _topics_reversed():
        cur = ""
        for para in (p.strip() for p in text.split("\n\n")):
            if not para:
                continue
            cur = f"{cur}\n\n{para}" if cur else para
            if len(cur) >= min_chars:
                if cur[:max_chars] not in seen:
                    seen.add(cur[:max_chars])
                    out.append(cur[:max_chars])
                cur = ""
                if len(out) >= n:
                    return out
    return out


def _read_user_text(source: str) -> str:
    path = Path(source).expanduser()
    if not path.is_file():
        raise InputError(f"calibration data {source}: file does not exist; expected a UTF-8 .txt file or 'builtin'")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"calibration data {source}: is not UTF-8 text") from None
    if len(text.strip()) < 200:
        raise InputError(f"calibration data {source}: has under 200 characters; expected more text")
    return text


def token_batches(tokenizer, task: str, n_batches: int, batch: int, seq_len: int, source: str = "builtin",
                  device: str = "cpu", skip: int = 0) -> list[dict]:
    """Model inputs: causal LM -> consecutive ``seq_len``-token windows of the calibration text (``labels``
    included); encoders/classifiers -> padded, truncated batches of calibration texts. ``skip`` batches are
    passed over first (a held-out split for checking)."""
    import torch

    total = n_batches + skip
    if task == "causal-lm":
        ids = tokenizer(calibration_text(source), add_special_tokens=False, verbose=False)["input_ids"]
        need = total * batch * seq_len
        if len(ids) < need:
            ids = (ids * (need // max(1, len(ids)) + 1))
        rows = torch.tensor(ids[:need], dtype=torch.long).view(total, batch, seq_len)
        out = [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r.clone()} for r in rows]
    else:
        texts = calibration_texts(total * batch, source)
        while len(texts) < total * batch:
            texts = texts + texts
        out = []
        for i in range(total):
            enc = tokenizer(texts[i * batch:(i + 1) * batch], padding="max_length", truncation=True,
                            max_length=seq_len, return_tensors="pt")
            out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    out = out[skip:]
    return [{k: v.to(device) for k, v in b.items()} for b in out]


def overlap_note(eval_settings, task: str) -> str | None:
    """A warning when an evaluation reads so much of the built-in text that it meets the calibration part."""
    if eval_settings is None or getattr(eval_settings, "source", "builtin") != "builtin":
        return None
    if task == "causal-lm" and eval_settings.token_budget > 50_000:
        return "the evaluation's token budget reaches the calibration text (end of the built-in text)"
    if task != "causal-lm" and eval_settings.max_samples > 60:
        return "the evaluation reads most built-in topics; calibration texts overlap it"
    return None
