"""Adaptive inference: static layer dropping (keep K of N blocks) and early exit for encoders.

``drop-layers`` removes whole blocks for good (the model saves with fewer layers). Which ones: evenly spread, the
first K, a list, or by measured importance (each block removed alone on calibration text; the K whose removal
hurts most are kept).

``early-exit`` decides per input how many blocks to run. Each block is wrapped: rows of the batch that have exited
skip the remaining blocks (their hidden state is frozen), and a block runs only on the rows still active, so an
easy batch really does less work. Exit rules:
- ``confidence`` — classifiers: the model's own pooler + classifier applied to the current hidden state; exit when
  the top class probability reaches the threshold. Encoders (no classifier): exit when the mean-pooled embedding
  stops moving — cosine between consecutive blocks' embeddings reaches the threshold.
- ``complexity`` — decided before running: inputs with fewer real tokens use fewer blocks,
  ``layers = min_layers + ceil((N - min_layers) * min(1, tokens / complexity_tokens))``.
The apply step sweeps thresholds on calibration text and reports mean blocks used and agreement with the full model
for each, so the trade-off is visible; the running model counts the blocks it really uses (``runtime``).
"""

from __future__ import annotations

from workbench.core.errors import InputError
from workbench.core.optimizations.base import Applied, Param, register


# ------------------------------------------------------------------ drop-layers

@register(
    name="drop-layers", family="adaptive", stage="prune",
    tp_ok=True,  # the blocks are whole on every rank; under tp the kept set is rank 0's (see below)
    summary="Static layer dropping: keep K of the N transformer blocks (evenly spread, first K, a list, or the most "
            "important by measured removal error).",
    params=(
        Param("keep", int, 0, "blocks kept; 0: use `fraction`", min=0, max=100000, search=(0,)),
        Param("fraction", float, 0.5, "fraction of blocks kept when keep=0", min=0.01, max=1.0,
              search=(0.5, 0.75)),
        Param("which", str, "importance", "importance: measured on calibration text; spread: evenly spaced "
              "(first and last kept); first: the first K; list: the `layers` parameter",
              choices=("importance", "spread", "first", "list"), search=("importance", "spread")),
        Param("layers", str, "", "which=list: comma-separated block indices to keep (e.g. 0,2,4)"),
        Param("calib_samples", int, 16, "calibration texts / windows for which=importance", min=2, max=4096),
    ),
    notes="Exports as plain transformers with num_hidden_layers = K. Accuracy drops without fine-tuning: "
          "distill (student = a layer subset) is the trained version of this.",
)
def apply_drop(model, params: dict, ctx) -> Applied:
    from workbench.core.measure.memory import model_size_bytes, param_count
    from workbench.core.optimizations import _common

    n = len(_common.blocks(model))
    if params["which"] == "list":
        keep = _common.parse_layers(params["layers"], n, "drop-layers:layers")
    else:
        k = params["keep"] or max(1, round(params["fraction"] * n))
        if k > n:
            raise InputError(f"drop-layers:keep={k}: the model has {n} blocks; expected keep <= {n}", param="opt")
        if params["which"] == "spread":
            keep = _common.spread(k, n)
        elif params["which"] == "first":
            keep = list(range(k))
        else:
            keep = _importance_keep(model, ctx, k, n, params)
            from workbench.core.parallel import group

            # tensor parallelism: every rank scored the blocks (the forwards are collective); all keep rank 0's set
            keep = group.from_rank0(lambda: keep)
    p0, b0 = param_count(model), model_size_bytes(model)
    _common.keep_layers(model, sorted(keep))
    ctx.log(f"drop-layers: kept {len(keep)} of {n} blocks: {sorted(keep)}")
    report = {"layers_before": n, "layers_after": len(keep), "kept": sorted(keep), "which": params["which"],
              "params_before": p0, "params_after": param_count(model), "bytes_before": b0,
              "bytes_after": model_size_bytes(model), **getattr(model, "_optbench_drop_scores", {})}
    return Applied(model, report)


def _importance_keep(model, ctx, k: int, n: int, params: dict) -> list[int]:
    import torch

    from workbench.core.optimizations.calibration import token_batches
    from workbench.core.optimizations import _common

    per = 4 if ctx.task == "causal-lm" else 8
    batches = token_batches(ctx.tokenizer, ctx.task, max(1, params["calib_samples"] // per), per, 128,
                            device=ctx.device)
    refs = _common.reference(model, ctx.task, batches)
    path = _common.layers_path(model)
    blocks = model.get_submodule(path)

    class Skip(torch.nn.Module):  # identity block: returns its hidden state unchanged
        def forward(self, hidden_states, *args, **kwargs):
            return hidden_states

    scores = {}
    for i in range(n):
        original = blocks[i]
        blocks[i] = Skip()
        try:
            scores[i] = _common.error_on(model, ctx.task, batches, refs)
        finally:
            blocks[i] = original
        ctx.progress((i + 1) / n)
    keep = sorted(sorted(scores, key=scores.get, reverse=True)[:k])
    model._optbench_drop_scores = {"removal_error": {str(i): s for i, s in scores.items()},
                                   "error_metric": _common.error_name(ctx.task)}
    return keep


# ------------------------------------------------------------------ early exit

class ExitState:
    """Per-forward bookkeeping shared by the wrapped blocks."""

    def __init__(self, n_layers: int) -> None:
        self.n = n_layers
        self.active = None  # bool [B]
        self.used = None  # int [B]: blocks run per row
        self.prev = None  # previous pooled embedding per row (encoder confidence)
        self.mask = None  # [B, T] attention mask of the current call
        self.budget = None  # int [B]: complexity rule's block budget per row
        # totals over every forward since apply (bench + eval): what the running model really did
        self.samples = 0
        self.layers_total = 0

    def runtime(self) -> dict:
        return {"samples": self.samples, "layers_total": self.layers_total,
                "mean_layers": self.layers_total / self.samples if self.samples else None, "of": self.n}


def _pool(hidden, mask):
    import torch

    if mask is None:
        pooled = hidden.mean(1)
    else:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


def _make_block(torch, inner, index: int, state: ExitState, rule):
    class ExitBlock(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner
            self.index = index

        def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
            b = hidden_states.shape[0]
            if state.active is None or state.active.shape[0] != b:  # not started by the model's pre-hook
                return self.inner(hidden_states, attention_mask, *args, **kwargs)
            rows = state.active.nonzero().squeeze(-1)
            if rows.numel() == 0:
                return hidden_states
            everyone = rows.numel() == b
            h_in = hidden_states if everyone else hidden_states.index_select(0, rows)
            mask = attention_mask
            if not everyone and mask is not None and mask.dim() > 0 and mask.shape[0] == b:
                mask = mask.index_select(0, rows)
            h_out = self.inner(h_in, mask, *args, **kwargs)
            out = h_out if everyone else hidden_states.index_copy(0, rows, h_out)
            state.used[rows] += 1
            if self.index < state.n - 1:
                done = rule(self.index, rows, h_out)
                if done is not None and bool(done.any()):
                    state.active[rows[done]] = False
            return out

    return ExitBlock()


def _classifier_probe(model):
    """pooler + classifier of a BERT-style sequence classifier, as a function of a hidden state."""
    import torch

    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    pooler = getattr(base, "pooler", None)
    classifier = getattr(model, "classifier", None)
    if pooler is None or not isinstance(classifier, torch.nn.Linear):
        raise InputError(f"early-exit: {type(model).__name__} has no BERT-style pooler + classifier to judge "
                         f"confidence with; expected a BERT-style classifier, criterion=complexity, or an encoder",
                         param="opt")

    def probe(hidden):
        return torch.softmax(classifier(pooler(hidden)).float(), dim=-1)

    return probe


@register(
    name="early-exit", family="adaptive", stage="runtime", tasks=("encoder", "seq-cls"),
    tp_reason=("it runs its own layer loop with an exit test after each block; not built for a model split over "
               "ranks"),
    summary="Early exit for encoders/classifiers: stop at the first block whose prediction is confident enough "
            "(or after a budget set by input complexity); rows that exit skip the remaining blocks.",
    params=(
        Param("criterion", str, "confidence", "confidence: classifier top probability, or embedding stability for "
              "encoders; complexity: block budget from the input's real token count",
              choices=("confidence", "complexity"), search=("confidence",)),
        Param("threshold", float, 0.98, "confidence: probability (classifiers) or consecutive-block cosine "
              "(encoders) to exit at", min=0.0, max=1.0, search=(0.95, 0.98, 0.995)),
        Param("min_layers", int, 1, "blocks always run before an exit is considered", min=1, max=100000),
        Param("complexity_tokens", int, 128, "complexity: inputs this long or longer use every block", min=1,
              max=1_000_000),
        Param("sweep", str, "", "thresholds to report the trade-off for (comma-separated; empty: a default set)"),
    ),
    conflicts={"compile": "early exit branches on data after every block; torch.compile would break the graph "
                          "at every check (use one or the other)"},
    exportable="no",
    export_reason="early exit is a runtime policy over the unchanged weights; export the base model",
    notes="A runtime policy over unchanged weights: export the base model. Mean blocks used is reported from "
          "calibration text and counted live during the benchmark and evaluation.",
    cost=1.0,  # a calibration pass to set the exits
)
def apply_exit(model, params: dict, ctx) -> Applied:
    import time

    import torch

    from workbench.core.optimizations.calibration import token_batches
    from workbench.core.optimizations import _common

    task = ctx.task
    path = _common.layers_path(model)
    blocks = model.get_submodule(path)
    n = len(blocks)
    min_layers = min(params["min_layers"], n)
    complexity = params["criterion"] == "complexity"
    state = ExitState(n)
    probe = _classifier_probe(model) if task == "seq-cls" and not complexity else None
    settings = {"enabled": True, "threshold": params["threshold"], "complexity_tokens": params["complexity_tokens"]}

    def rule(index, rows, h_out):
        emb = None
        if task == "encoder" and not complexity:  # embedding stability needs the previous block's embedding
            emb = _pool(h_out, None if state.mask is None else state.mask.index_select(0, rows))
            moved = (emb * state.prev[rows]).sum(-1)
            state.prev[rows] = emb
        if not settings["enabled"] or index + 1 < min_layers:
            return None
        if complexity:
            return state.used[rows] >= state.budget[rows]
        if probe is not None:
            return probe(h_out).amax(-1) >= settings["threshold"]
        return moved >= settings["threshold"]

    wrapped = torch.nn.ModuleList([_make_block(torch, blocks[i], i, state, rule) for i in range(n)])
    _common.set_module(model, path, wrapped)
    live = state.runtime()  # a plain dict, updated in place after every forward (bench and eval included)

    def start(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        ref = ids if ids is not None else kwargs["inputs_embeds"]
        mask = kwargs.get("attention_mask")
        b, dev = ref.shape[0], ref.device
        state.active = torch.ones(b, dtype=torch.bool, device=dev)
        state.used = torch.zeros(b, dtype=torch.long, device=dev)
        state.mask = mask
        state.prev = torch.zeros(b, getattr(model.config, "hidden_size", 1), device=dev)
        if complexity:
            tokens = mask.sum(-1) if mask is not None else torch.full((b,), ref.shape[1], device=dev)
            frac = (tokens.float() / settings["complexity_tokens"]).clamp(max=1.0)
            state.budget = (min_layers + torch.ceil((n - min_layers) * frac)).long().clamp(min_layers, n)

    def finish(module, args, kwargs, output):
        if state.used is not None and state.active is not None:
            state.samples += int(state.used.numel())
            state.layers_total += int(state.used.sum())
            live.update(state.runtime())
        state.active = None
        return output

    model.register_forward_pre_hook(start, with_kwargs=True)
    model.register_forward_hook(finish, with_kwargs=True)
    model._optbench_exit_state = state

    # -------- trade-off on calibration text, against the same model with exits disabled
    batches = token_batches(ctx.tokenizer, task, n_batches=4, batch=8, seq_len=128, device=ctx.device)

    def measure():
        s0, l0 = state.samples, state.layers_total
        t0 = time.perf_counter()
        with torch.inference_mode():
            outs = [_common.outputs(model, task, b) for b in batches]
        ms = (time.perf_counter() - t0) * 1000 / len(batches)
        return outs, (state.layers_total - l0) / max(1, state.samples - s0), ms

    def versus_full(outs, full) -> dict:
        if task == "encoder":
            return {"cosine_to_full": float(sum((o * f).sum(-1).mean() for o, f in zip(outs, full)) / len(full))}
        return {"agreement_with_full": float(sum((o.argmax(-1) == f.argmax(-1)).float().mean()
                                                 for o, f in zip(outs, full)) / len(full))}

    settings["enabled"] = False
    full, _, full_ms = measure()
    settings["enabled"] = True
    knob = "complexity_tokens" if complexity else "threshold"
    raw = params["sweep"].strip()
    try:
        grid = sorted({float(x) for x in raw.split(",") if x.strip()}) if raw else \
            ([16, 32, 64, 128, 256] if complexity else [0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999])
    except ValueError:
        raise InputError(f"early-exit:sweep={raw!r}: expected comma-separated numbers", param="opt") from None
    tradeoff = []
    for value in sorted(set(grid) | {settings[knob]}):
        settings[knob] = int(value) if complexity else value
        outs, mean_layers, ms = measure()
        tradeoff.append({knob: value, "mean_layers": mean_layers, "ms_per_batch": ms, **versus_full(outs, full)})
        ctx.progress(len(tradeoff) / (len(grid) + 1))
    settings[knob] = params[knob]
    outs, mean_layers, ms = measure()
    chosen = versus_full(outs, full)
    state.samples, state.layers_total = 0, 0  # from here on: what the benchmark and evaluation really ran
    live.update(state.runtime())
    ctx.log(f"early-exit: {mean_layers:.2f} of {n} blocks on average on calibration text ({params['criterion']}, "
            f"{knob} {params[knob]}); {chosen}")
    report = {"criterion": params["criterion"], knob: params[knob], "layers": n, "min_layers": min_layers,
              "mean_layers_calibration": mean_layers, **{k + "_calibration": v for k, v in chosen.items()},
              "full_ms_per_batch": full_ms, "ms_per_batch": ms, "tradeoff": tradeoff, "runtime": live,
              "exportable": "no",
              "export_note": "early exit is a runtime policy over the unchanged weights; export the base model"}
    return Applied(model, report)
