"""Evaluation and calibration text. Torch-free: the parent validates a user's eval file before any job starts.

Built-in text is Python's own reference documentation (``pydoc_data.topics``), as shipped with CPython 3.11.7,
vendored in ``builtin_text.json.gz`` (137 KB; Python Software Foundation License). It is vendored, not read from the
running interpreter, because the topics change between Python versions: the same model measured perplexity 14.71
under Python 3.11 and 15.52 under 3.12 (an H200 box) only because the text differed. ``EvalData.digest`` (sha256 of
what is evaluated) goes into every cache key, so a changed text can never be served a stale baseline.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from workbench.core.errors import InputError


_TOPICS: list[tuple[str, str]] | None = None


def builtin_topics() -> list[tuple[str, str]]:
    global _TOPICS
    if _TOPICS is None:
        import gzip

        raw = gzip.decompress((Path(__file__).parent / "builtin_text.json.gz").read_bytes())
        topics = json.loads(raw.decode("utf-8"))
        _TOPICS = [(key, topics[key]) for key in sorted(topics)]
    return list(_TOPICS)


def builtin_text() -> str:
    """About 465 KB of real English prose, in a fixed order."""
    return "\n\n".join(text.strip() for _, text in builtin_topics())


def builtin_pairs(limit: int) -> list[tuple[str, str]]:
    """(query, document) pairs: a topic's first paragraph is the query, the rest of the topic is the document."""
    pairs = []
    for _, text in builtin_topics():
        paras = [p.strip() for p in text.strip().split("\n\n") if p.strip()]
        if len(paras) < 2:
            continue
        query, document = paras[0], "\n\n".join(paras[1:])
        if len(query) < 40 or len(document) < 80:
            continue
        pairs.append((query, document))
        if len(pairs) >= limit:
            break
    return pairs


@dataclass
class EvalData:
    """What an evaluator consumes; which fields are set depends on the source and the task."""

    source: str
    text: str | None = None  # causal LM: one long text
    texts: list[str] | None = None  # encoder (cosine) / classifier
    pairs: list[tuple[str, str]] | None = None  # encoder retrieval
    labels: list | None = None  # classifier

    @property
    def digest(self) -> str:
        """sha256 of everything evaluated (keys caches: the same source name can hold different text)."""
        import hashlib

        h = hashlib.sha256(self.source.encode())
        for part in (self.text, self.texts, self.pairs, self.labels):
            h.update(json.dumps(part, default=str).encode())
        return h.hexdigest()[:24]


def _rows_from_file(path: Path, where: str) -> tuple[list[dict], list[str]]:
    suffix = path.suffix.lower()
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{where}: is not UTF-8 text; expected a .txt, .jsonl or .csv file", param="eval") from None
    if not raw.strip():
        raise InputError(f"{where}: is empty; expected text, JSON lines or CSV rows", param="eval")
    if suffix == ".jsonl":
        rows = []
        for i, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: line {i} is not JSON ({exc.msg}); expected one JSON object per line",
                                 param="eval") from None
            if not isinstance(obj, dict):
                raise InputError(f"{where}: line {i} is not a JSON object; expected one object per line", param="eval")
            rows.append(obj)
        columns = sorted({k for r in rows for k in r})
        return rows, columns
    if suffix == ".csv":
        reader = csv.DictReader(raw.splitlines())
        rows = [dict(r) for r in reader]
        if not rows:
            raise InputError(f"{where}: has a header but no rows; expected CSV rows", param="eval")
        return rows, list(reader.fieldnames or [])
    return [], []


def load_eval(settings, task: str) -> EvalData:
    """Read the eval source named by ``settings`` (an EvalSettings) for ``task``. Raises InputError on bad input."""
    source = settings.source
    if source == "builtin":
        if task == "causal-lm":
            return EvalData(source, text=builtin_text())
        pairs = builtin_pairs(settings.max_samples)
        texts = [t for pair in pairs for t in pair][: settings.max_samples]
        return EvalData(source, texts=texts, pairs=pairs if task == "encoder" else None)
    if source == "none":
        return EvalData(source)
    if source.startswith("hf:"):
        return _load_hf(settings, task)
    path = Path(source).expanduser()
    where = source  # errors name the source; param="eval" names the setting
    if not path.is_file():
        raise InputError(f"{where}: file does not exist; expected a .txt, .jsonl or .csv file, 'builtin' or hf:NAME",
                         param="eval")
    if path.suffix.lower() not in (".txt", ".jsonl", ".csv", ".md"):
        raise InputError(f"{where}: unsupported file type {path.suffix!r}; expected .txt, .jsonl or .csv", param="eval")
    rows, columns = _rows_from_file(path, where)
    if not rows:  # plain text
        text = path.read_text(encoding="utf-8")
        if task == "causal-lm":
            return EvalData(source, text=text)
        texts = [p.strip() for p in text.split("\n\n") if p.strip()][: settings.max_samples]
        if len(texts) < 2:
            raise InputError(f"{where}: has fewer than 2 paragraphs; expected blank-line separated texts", param="eval")
        return EvalData(source, texts=texts)
    return _from_rows(rows, columns, settings, task, where)


def _column(rows: list[dict], columns: list[str], name: str, where: str, why: str) -> list:
    if name not in columns:
        raise InputError(f"{where}: no column {name!r} ({why}); found columns: {', '.join(columns) or 'none'}",
                         param="eval")
    values = [r.get(name) for r in rows]
    if any(v is None or (isinstance(v, str) and not v.strip()) for v in values):
        raise InputError(f"{where}: column {name!r} has empty values; expected a value in every row", param="eval")
    return values


def _from_rows(rows, columns, settings, task, where) -> EvalData:
    if task == "causal-lm":
        texts = _column(rows, columns, settings.text_column, where, "text to score")
        return EvalData(where, text="\n\n".join(str(t) for t in texts))
    if task == "encoder":
        if settings.query_column in columns and settings.document_column in columns:
            q = _column(rows, columns, settings.query_column, where, "retrieval queries")
            d = _column(rows, columns, settings.document_column, where, "retrieval documents")
            pairs = [(str(a), str(b)) for a, b in zip(q, d)][: settings.max_samples]
            return EvalData(where, texts=[t for p in pairs for t in p], pairs=pairs)
        texts = _column(rows, columns, settings.text_column, where, "texts to embed")
        return EvalData(where, texts=[str(t) for t in texts][: settings.max_samples])
    texts = _column(rows, columns, settings.text_column, where, "texts to classify")
    labels = _column(rows, columns, settings.label_column, where, "labels") \
        if settings.label_column in columns else None
    n = settings.max_samples
    return EvalData(where, texts=[str(t) for t in texts][:n], labels=labels[:n] if labels else None)


def _load_hf(settings, task: str) -> EvalData:
    spec = settings.source[3:]
    name, _, config = spec.partition(":")
    where = settings.source
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise InputError(f"{where}: the 'datasets' package is not installed; expected `pip install datasets` "
                         f"(and a network) or a local file", param="eval") from None
    try:
        ds = datasets.load_dataset(name, config or None, split=settings.split)
    except Exception as exc:  # datasets raises many types; all mean "could not get it"
        raise InputError(f"{where}: could not load ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                         param="eval") from None
    rows = [dict(r) for r in ds.select(range(min(len(ds), max(settings.max_samples, 2000))))]
    if not rows:
        raise InputError(f"{where}: split {settings.split!r} is empty", param="eval")
    return _from_rows(rows, list(rows[0].keys()), settings, task, where)
