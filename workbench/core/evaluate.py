"""Accuracy against the baseline, without labels where none exist.

Causal LM: perplexity on a fixed token budget; next-token agreement and mean KL(baseline || optimized) on the
same positions. The baseline's reference is its top-k log-probabilities per position plus one bucket for the
rest of the vocabulary; KL over that coarse partition is a lower bound of the full KL (equal when the top-k hold
all the mass) and needs kilobytes, not gigabytes, to cache.
Encoder: mean cosine similarity to the baseline's embeddings; retrieval recall@1 (value, baseline, delta).
Classifier: accuracy on labels when given; agreement with and KL from the baseline's predictions.
"""

from __future__ import annotations

import math
from typing import Callable

from workbench.core.data import EvalData


def _windows(tokenizer, text: str, budget: int, window: int):
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    need = budget + 1
    if len(ids) < min(need, window + 1):
        from workbench.core.errors import InputError

        raise InputError(f"eval text: has {len(ids)} tokens; expected at least {min(need, window + 1)}")
    ids = ids[:need]
    out = []
    pos = 0
    while pos + 1 < len(ids):
        chunk = ids[pos: pos + window + 1]
        if len(chunk) < 2:
            break
        out.append(torch.tensor(chunk, dtype=torch.long).unsqueeze(0))
        pos += window
    return out


def eval_causal(model, tokenizer, data: EvalData, settings, device: str, reference: dict | None,
                on_progress: Callable[[float], None] | None = None) -> tuple[dict, dict]:
    """Returns (metrics, reference). With ``reference`` None this is the baseline and the reference is built."""
    import torch

    windows = _windows(tokenizer, data.text, settings.token_budget, settings.window)
    k = settings.kl_topk
    nll_sum, count = 0.0, 0
    topk_lp, topk_idx, agree, kl_sum = [], [], 0, 0.0
    offset = 0
    with torch.inference_mode():
        for i, chunk in enumerate(windows):
            chunk = chunk.to(device)
            logits = model(input_ids=chunk[:, :-1]).logits.float()[0]
            lp = torch.log_softmax(logits, dim=-1)
            target = chunk[0, 1:]
            nll_sum += float(-lp.gather(1, target[:, None]).sum())
            n = target.numel()
            count += n
            if reference is None:
                values, idx = lp.topk(k, dim=-1)
                topk_lp.append(values.cpu())
                topk_idx.append(idx.to(torch.int32).cpu())
            else:
                ref_lp = reference["topk_logprobs"][offset: offset + n].to(device)
                ref_idx = reference["topk_indices"][offset: offset + n].to(device).long()
                agree += int((lp.argmax(dim=-1) == ref_idx[:, 0]).sum())
                kl_sum += float(_topk_kl(ref_lp, lp.gather(1, ref_idx)).sum())
            offset += n
            if on_progress:
                on_progress((i + 1) / len(windows))
    metrics = {"perplexity": math.exp(nll_sum / count)}
    new_reference = None
    if reference is None:
        new_reference = {"topk_logprobs": torch.cat(topk_lp), "topk_indices": torch.cat(topk_idx)}
        metrics["next_token_agreement"] = 1.0
        metrics["kl_divergence"] = 0.0
    else:
        metrics["next_token_agreement"] = agree / count
        metrics["kl_divergence"] = kl_sum / count
    metrics["tokens_scored"] = count
    return metrics, new_reference


def _topk_kl(p_lp, q_lp):
    """KL(p || q) per row over the top-k support of p plus one tail bucket. p_lp, q_lp: [n, k] log-probs."""
    import torch

    p = p_lp.exp()
    q = q_lp.exp()
    p_tail = (1 - p.sum(-1)).clamp_min(1e-12)
    q_tail = (1 - q.sum(-1)).clamp_min(1e-12)
    head = (p * (p_lp - q_lp)).sum(-1)
    tail = p_tail * (p_tail.log() - q_tail.log())
    return (head + tail).clamp_min(0.0)


def _embed(model, tokenizer, texts: list[str], device: str, max_len: int = 256, batch: int = 16):
    """Mean-pooled, L2-normalised embeddings of the last hidden state (sentence-transformers' recipe)."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            enc = tokenizer(texts[i: i + batch], padding=True, truncation=True, max_length=max_len,
                            return_tensors="pt").to(device)
            hidden = model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
    return torch.cat(out)


def _recall_at_1(emb, n_pairs: int) -> float:
    queries, docs = emb[0: 2 * n_pairs: 2], emb[1: 2 * n_pairs: 2]
    sims = queries @ docs.T
    import torch

    return float((sims.argmax(dim=1) == torch.arange(n_pairs)).float().mean())


def eval_encoder(model, tokenizer, data: EvalData, settings, device: str, reference: dict | None,
                 on_progress=None) -> tuple[dict, dict]:
    import torch

    texts = [t for pair in data.pairs for t in pair] if data.pairs else data.texts
    emb = _embed(model, tokenizer, texts, device)
    if on_progress:
        on_progress(1.0)
    metrics: dict = {}
    if data.pairs:
        metrics["recall_at_1"] = _recall_at_1(emb, len(data.pairs))
    if reference is None:
        metrics["cosine_to_baseline"] = 1.0
        return metrics, {"embeddings": emb}
    metrics["cosine_to_baseline"] = float((emb * reference["embeddings"]).sum(-1).mean())
    metrics["cosine_min"] = float((emb * reference["embeddings"]).sum(-1).min())
    metrics["texts"] = len(texts)
    return metrics, None


def eval_classifier(model, tokenizer, data: EvalData, settings, device: str, reference: dict | None,
                    on_progress=None) -> tuple[dict, dict]:
    import torch

    probs = []
    with torch.inference_mode():
        for i in range(0, len(data.texts), 16):
            enc = tokenizer(data.texts[i: i + 16], padding=True, truncation=True, max_length=256,
                            return_tensors="pt").to(device)
            probs.append(torch.log_softmax(model(**enc).logits.float(), dim=-1).cpu())
    lp = torch.cat(probs)
    if on_progress:
        on_progress(1.0)
    pred = lp.argmax(-1)
    metrics: dict = {}
    if data.labels is not None:
        labels = _label_ids(data.labels, model.config)
        metrics["accuracy"] = float((pred == labels).float().mean())
    if reference is None:
        metrics["agreement"] = 1.0
        metrics["kl_divergence"] = 0.0
        return metrics, {"logprobs": lp}
    ref = reference["logprobs"]
    metrics["agreement"] = float((pred == ref.argmax(-1)).float().mean())
    metrics["kl_divergence"] = kl_divergence(ref, lp)
    return metrics, None


def kl_divergence(ref_lp, got_lp) -> float:
    """Mean KL(p || q) per row of two full log-softmax outputs, >= 0 by construction.

    With sum(p) = sum(q) = 1, KL = sum p * (d + e^-d - 1), d = log p - log q, and every term is >= 0
    (x + e^-x >= 1); the textbook sum p * d is a difference of near-equal numbers that rounding takes below zero
    when the two models almost agree (seen: -4e-8 on an AVX2 CPU, -8.6e-9 for a classifier). expm1 keeps small terms
    accurate; q - p is used directly where e^-d would overflow; a term rounded below zero is 0.
    """
    import torch

    d = ref_lp - got_lp
    p = ref_lp.exp()
    q_minus_p = torch.where(d > -20, p * torch.expm1(-d.clamp_min(-20)), got_lp.exp() - p)
    terms = (p * d + q_minus_p).clamp_min(0.0)
    return float(terms.sum(-1).mean())


def _label_ids(labels, config):
    import torch

    from workbench.core.errors import InputError

    label2id = {str(k).lower(): v for k, v in (getattr(config, "label2id", None) or {}).items()}
    out = []
    for value in labels:
        if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
            out.append(int(value))
        elif str(value).lower() in label2id:
            out.append(label2id[str(value).lower()])
        else:
            raise InputError(f"eval labels: {value!r} is not a label of this model; expected an index or one of "
                             f"{', '.join(label2id) or 'integer ids'}")
    return torch.tensor(out)


def evaluate(model, tokenizer, task: str, data: EvalData, settings, device: str, reference=None, on_progress=None):
    if data.text is None and data.texts is None:
        return {}, {}
    fn = {"causal-lm": eval_causal, "encoder": eval_encoder, "seq-cls": eval_classifier}[task]
    return fn(model, tokenizer, data, settings, device, reference, on_progress)


# Which way is better, for deltas and budgets.
HIGHER_IS_BETTER = {"perplexity": False, "kl_divergence": False, "next_token_agreement": True,
                    "recall_at_1": True, "cosine_to_baseline": True, "cosine_min": True, "accuracy": True,
                    "agreement": True}
