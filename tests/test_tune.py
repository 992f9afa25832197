"""optbench tune: search space, budgets, frontier (pure), and real tunes on tiny models through tune-worker jobs."""

import json
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import FAST, ROOT, fast_recipe
from workbench.core import tune
from workbench.core.errors import InputError
from workbench.core.recipe import ModelSpec, OptStep, Recipe
from workbench.core.tune import decide as tune_decide
from workbench.core.tune import orchestrator as tune_orchestrator
from workbench.core.tune import space as tune_space


# Tune orders an emulated bf16 cast last (see test_space_orders_an_emulated_bf16_cast_last); every other test here
# plans for a CPU with native bf16 so its expected order holds on any machine, AVX2-only ones included.
NATIVE_BF16 = "avx2 avx512f avx512bw avx512vl avx512dq avx512_vnni avx512_bf16"


@pytest.fixture(autouse=True)
def _plan_for_a_bf16_cpu(monkeypatch):
    monkeypatch.setenv("OPTBENCH_CPU_FLAGS", NATIVE_BF16)  # inherited by the CLI and worker subprocesses


# ------------------------------------------------------------------ search space (pure, torch-free)

def test_space_singles_pairs_and_recorded_skips():
    sp = tune.build_space("encoder", "cpu", opts=["bf16", "int8-dynamic", "prune-l1", "kv-cache", "sparse-2of4"])
    labels = [c.label for c in sp.candidates]
    singles = sorted(c.label for c in sp.candidates if c.phase < 2)
    assert singles == sorted(["bf16:mode=cast", "bf16:mode=autocast", "int8-dynamic:backend=torch.ao",
                              "int8-dynamic:backend=torchao", "prune-l1:sparsity=0.1", "prune-l1:sparsity=0.3",
                              "prune-l1:sparsity=0.5"])
    reasons = {s["label"]: s["reason"] for s in sp.skipped}
    assert "causal-lm" in reasons["kv-cache"]  # task filter
    assert "cuda" in reasons["sparse-2of4"]  # device filter
    # bf16 then int8-dynamic is rejected by Recipe.validate: recorded with the validator's reason, not a candidate
    rejected = [s for s in sp.skipped if s["label"].startswith("bf16") and "int8-dynamic" in s["label"]]
    assert len(rejected) == 4 and all("cannot be combined" in s["reason"] for s in rejected)
    assert not any("bf16" in lab and "int8-dynamic" in lab for lab in labels)
    # combinations across stages, in stage order (prune before precision/quantize)
    assert "prune-l1:sparsity=0.5 + bf16:mode=cast" in labels
    assert "prune-l1:sparsity=0.1 + int8-dynamic:backend=torchao" in labels
    assert sp.counts == {**sp.counts, "singles": 7, "pairs": 12, "triples": 0, "size": 19, "capped": 0}
    for c in sp.candidates:  # every candidate is valid and fully resolved
        r = Recipe(ModelSpec("x"), [OptStep(s["name"], s["params"]) for s in c.steps]).validate("encoder", "cpu")
        assert [s.params for s in r.optimizations] == [s["params"] for s in c.steps]
    again = tune.build_space("encoder", "cpu", opts=["bf16", "int8-dynamic", "prune-l1", "kv-cache", "sparse-2of4"])
    assert [c.label for c in again.candidates] == labels  # deterministic
    with pytest.raises(InputError, match="^nope: unknown optimization") as exc:
        tune.build_space("encoder", "cpu", opts=["nope"])
    assert exc.value.param == "opts"


def test_space_order_cheap_first_and_cap_keeps_singles():
    sp = tune.build_space("causal-lm", "cpu", max_space=5000)
    first = {}
    for i, c in enumerate(sp.candidates):
        if c.phase < 2:
            first.setdefault(c.steps[0]["name"], i)
    assert first["bf16"] < first["int8-dynamic"] < first["kv-cache"] < first["prune-l1"] < first["compile"] \
        < first["int8-selective"] < first["qat"] < first["distill"]
    costs = [c.cost for c in sp.candidates]
    assert costs == sorted(costs)
    # among one optimization's singles, its default values come first
    prune = [c for c in sp.candidates if c.phase < 2 and c.steps[0]["name"] == "prune-l1"]
    assert prune[0].phase == 0 and prune[0].steps[0]["params"]["sparsity"] == 0.5
    triple = next(c for c in sp.candidates if c.phase == 3)
    assert len(triple.steps) == 3
    capped = tune.build_space("causal-lm", "cpu", max_space=80)
    assert capped.counts["size"] == 80 and capped.counts["capped"] == len(sp.candidates) - 80
    singles = {c.ident for c in sp.candidates if c.phase < 2}
    assert singles <= {c.ident for c in capped.candidates}  # the cap drops combinations before singles


@pytest.mark.parametrize("native", [True, False])
def test_space_orders_an_emulated_bf16_cast_last(monkeypatch, native):
    """Where the CPU has no native bf16 matmuls (an AVX2-only EPYC: 2.9x slower decode), the cast runs after
    everything else; where it has them, it is the cheapest trial. Faked, so both hold on any CPU."""
    from workbench.core.measure import cpu

    real = cpu.describe
    monkeypatch.setattr(cpu, "describe", lambda *a, **k: {**real(*a, **k), "bf16_native": native})
    sp = tune.build_space("causal-lm", "cpu", max_space=5000)
    index = {c.label: i for i, c in enumerate(sp.candidates)}
    cast, distill = index["bf16:mode=cast"], min(i for lab, i in index.items() if lab.startswith("distill"))
    if native:
        assert cast < index["int8-weight-only"] and "ordered_last" not in sp.counts
    else:
        assert cast > distill and sp.counts["ordered_last"]["names"] == ["bf16"]
        assert index["bf16:mode=autocast"] < distill  # autocast keeps fp32 weights: not penalised
    assert tune.build_space("causal-lm", "cuda", max_space=5000).counts.get("ordered_last") is None


def test_space_skips_optimizations_whose_module_is_not_importable(monkeypatch):
    real = tune_space.importlib.util.find_spec
    monkeypatch.setattr(tune_space.importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "torchao" else real(name, *a, **k))
    sp = tune.build_space("encoder", "cpu", opts=["int8-weight-only", "bf16"])
    reasons = {s["label"]: s["reason"] for s in sp.skipped}
    assert "torchao" in reasons["int8-weight-only"] and "not importable" in reasons["int8-weight-only"]
    assert all(s["name"] != "int8-weight-only" for c in sp.candidates for s in c.steps)
    assert [c.label for c in sp.candidates] == ["bf16:mode=cast", "bf16:mode=autocast"]


# ------------------------------------------------------------------ budgets, objectives, frontier (pure)

def test_parse_accuracy_budget_and_duration():
    b = tune.parse_accuracy_budget("1%")
    assert (b.default.kind, b.default.value, b.per_metric) == ("relative", 0.01, {})
    b = tune.parse_accuracy_budget("0.01")
    assert (b.default.kind, b.default.value) == ("absolute", 0.01)
    b = tune.parse_accuracy_budget("perplexity=2%,cosine=0.01")
    assert b.default is None
    assert (b.per_metric["perplexity"].kind, b.per_metric["perplexity"].value) == ("relative", 0.02)
    assert (b.per_metric["cosine_to_baseline"].kind, b.per_metric["cosine_to_baseline"].value) == ("absolute", 0.01)
    for bad, named in (("bogus=1%", "bogus"), ("5x", "5x"), ("kl=1%", "kl=1%"), ("-1%", "-1%"), ("", "''"),
                       ("1%,2%", "1%,2%")):
        with pytest.raises(InputError) as exc:
            tune.parse_accuracy_budget(bad)
        assert exc.value.message.startswith(named) and exc.value.param == "max_accuracy_drop"
    assert tune.parse_duration("20m") == 1200 and tune.parse_duration("1h30m") == 5400
    assert tune.parse_duration("90s") == 90 and tune.parse_duration("45") == 45
    for bad in ("10q", "0", "m", "-5m", ""):
        with pytest.raises(InputError, match="not a duration") as exc:
            tune.parse_duration(bad)
        assert exc.value.param == "budget" and "--" not in exc.value.message


def test_check_accuracy_relative_absolute_direction_and_zero_baseline():
    table = {"perplexity": {"value": 15.0, "baseline": 14.7, "higher_is_better": False},
             "next_token_agreement": {"value": 0.97, "baseline": 1.0, "higher_is_better": True},
             "kl_divergence": {"value": 0.002, "baseline": 0.0, "higher_is_better": False}}
    r = tune.check_accuracy(table, tune.parse_accuracy_budget("1%"))
    assert not r["ok"]
    assert r["rows"]["perplexity"]["ok"] is False and r["rows"]["perplexity"]["drop"] == pytest.approx(0.3)
    assert r["rows"]["next_token_agreement"]["ok"] is False
    assert "kl_divergence" in r["unconstrained"] and r["rows"]["kl_divergence"]["limit"] is None
    assert r["budget_used"] == pytest.approx(max(0.3 / 0.147, 0.03 / 0.01))  # the worst metric
    r = tune.check_accuracy(table, tune.parse_accuracy_budget("perplexity=3%,kl=0.01"))
    assert r["ok"] and "next_token_agreement" in r["unconstrained"]
    assert r["budget_used"] == pytest.approx(max(0.3 / (0.03 * 14.7), 0.002 / 0.01))
    better = {"cosine_to_baseline": {"value": 1.0, "baseline": 1.0, "higher_is_better": True},
              "recall_at_1": {"value": 0.85, "baseline": 0.8, "higher_is_better": True}}
    r = tune.check_accuracy(better, tune.parse_accuracy_budget("0.01"))
    assert r["ok"] and r["budget_used"] == pytest.approx(0.0)
    assert r["rows"]["recall_at_1"]["drop"] == pytest.approx(-0.05)


def test_objective_metric_per_task_and_device():
    assert tune.objective_info("latency", "causal-lm", "cpu")["metric"] == "decode_ms_per_token.p50"
    assert tune.objective_info("latency", "encoder", "cpu")["metric"] == "latency_ms.p50"
    assert tune.objective_info("throughput", "causal-lm", "cpu")["direction"] == "max"
    assert tune.objective_info("memory", "encoder", "cuda:0")["metric"] == "memory_mb.cuda_peak_reserved"
    assert tune.objective_info("memory", "encoder", "cpu")["metric"] == "memory_mb.rss_peak"
    with pytest.raises(InputError, match="^speed: unknown objective") as exc:
        tune.objective_info("speed", "encoder", "cpu")
    assert exc.value.param == "objective"
    phase = {"decode_ms_per_token": {"p50": 20.0}, "latency_ms": {"p50": 700.0}, "throughput": {"value": 50.0}}
    assert tune.dotted(phase, "decode_ms_per_token.p50") == 20.0 and tune.dotted(phase, "ttft_ms.p50") is None
    assert tune.gain(20.0, 40.0, "min") == 2.0 and tune.gain(100.0, 50.0, "max") == 2.0


def test_pareto_frontier_and_choice_on_synthetic_results():
    pts = [{"id": 0, "objective": 100.0, "budget_used": 0.0},  # the baseline
           {"id": 1, "objective": 40.0, "budget_used": 0.5},
           {"id": 2, "objective": 50.0, "budget_used": 0.6},  # dominated by 1
           {"id": 3, "objective": 30.0, "budget_used": 3.0},  # fastest, over the budget: still on the frontier
           {"id": 4, "objective": 40.0, "budget_used": 0.5},  # identical to 1: the first is kept
           {"id": 5, "objective": 60.0, "budget_used": -0.1},  # more accurate than the baseline: dominates it
           {"id": 6, "objective": None, "budget_used": 0.0}]  # not measured: ignored
    assert [p["id"] for p in tune.pareto_frontier(pts, "min")] == [3, 1, 5]
    thr = [{"id": i, "objective": o, "budget_used": u} for i, o, u in ((0, 10.0, 0.0), (1, 30.0, 0.2),
                                                                         (2, 20.0, 0.3), (3, 25.0, 0.1))]
    assert [p["id"] for p in tune.pareto_frontier(thr, "max")] == [1, 3, 0]
    trials = [{"id": 1, "objective": 30.0, "feasible": False, "gain": 3.3, "recipe": [1], "budget_used": 3.0},
              {"id": 2, "objective": 40.0, "feasible": True, "gain": 2.5, "recipe": [1, 2], "budget_used": 0.5},
              {"id": 3, "objective": 40.0, "feasible": True, "gain": 2.5, "recipe": [1], "budget_used": 0.5},
              {"id": 4, "objective": 45.0, "feasible": True, "gain": 2.2, "recipe": [1], "budget_used": 0.1}]
    assert tune.choose(trials, 0.02)["id"] == 3  # best feasible gain; tie: fewer steps
    # gains within 1 % of the best tie: the shorter recipe wins (an 8B tune picked a no-op cast + graph-decode
    # over graph-decode alone by 0.009 %); outside the band the faster one does
    cast = [{"id": 1, "feasible": True, "gain": 7.4008, "recipe": ["graph-decode"], "budget_used": 0.0},
            {"id": 2, "feasible": True, "gain": 7.4015, "recipe": ["bf16", "graph-decode"], "budget_used": 0.0}]
    assert tune.choose(cast, 0.05)["id"] == 1
    assert tune.choose([cast[0], {**cast[1], "gain": 7.6}], 0.05)["id"] == 2
    assert tune.choose([{**trials[3], "gain": 1.01}], 0.02) is None  # within noise of the baseline
    assert tune.choose(trials[:1], 0.02) is None


def gating_tuner(task: str, device: str, opts: list[str]):
    """A Tuner with a search space and no worker, and ``put(label, **fields)`` to record a decided trial."""
    t = tune.Tuner(tune.TuneConfig(recipe=fast_recipe("unused"), objective="latency"))
    t.objective = tune.objective_info("latency", task, device)
    sp = tune.build_space(task, device, opts=opts, max_space=5000)
    t.singles = {c.ident: c for c in sp.candidates if c.phase < 2}
    cand = {c.label: c for c in sp.candidates}

    def put(label, **kw):
        summary = {"label": label, "id": len(t.trials) + 1, "recipe": cand[label].steps, "status": "finished",
                   "accuracy_ok": True, "feasible": True, "reason": None, "error": None, **kw}
        t.trials.append(summary)
        t.by_ident[cand[label].ident] = summary

    return t, sp, cand, put


def test_combinations_are_gated_and_ranked_by_their_parts_results():
    t, sp, cand, put = gating_tuner("encoder", "cpu", ["bf16", "prune-l1", "int8-dynamic", "attention"])

    put("bf16:mode=cast", gain=3.0, objective=40.0)
    put("prune-l1:sparsity=0.5", gain=1.2, objective=100.0, accuracy_ok=False, feasible=False,
        reason="accuracy: cosine_to_baseline drop 0.3 > 0.01")
    put("prune-l1:sparsity=0.3", gain=1.01, objective=118.0)
    put("prune-l1:sparsity=0.1", status="failed", gain=None, objective=None, feasible=False,
        error={"kind": "oom"})
    put("attention:impl=eager", status="pruned", gain=1.1, objective=109.0, accuracy_ok=None, feasible=False)
    put("int8-dynamic:backend=torchao", status="pruned", gain=1.5, objective=80.0, accuracy_ok=None,
        feasible=False)

    def gate(label):
        return t._gate(cand[label])

    assert "alone already exceeds the accuracy budget" in gate("prune-l1:sparsity=0.5 + bf16:mode=cast")
    assert "alone does not improve latency" in gate("prune-l1:sparsity=0.3 + bf16:mode=cast")
    assert "failed on its own (oom)" in gate("prune-l1:sparsity=0.1 + bf16:mode=cast")
    assert gate("bf16:mode=cast + attention:impl=eager") is None  # predicted x3.3 beats the best x3.0
    assert "predicted x1.65" in gate("int8-dynamic:backend=torchao + attention:impl=eager")  # 1.5 x 1.1 << 3.0
    assert gate("bf16:mode=autocast") is None  # singles always run
    # within one cost class, the combination with the better predicted gain goes first
    pending = [cand["int8-dynamic:backend=torchao + attention:impl=eager"],
               cand["bf16:mode=cast + attention:impl=eager"]]
    assert t._next(pending).label == "bf16:mode=cast + attention:impl=eager"


def test_cuda_space_times_weight_changes_under_graph_decode():
    """On CUDA eager batch-1 decode is launch-bound (8B, H200: every quantized single lost to the eager baseline,
    int4 under graph-decode made 6x): graph-decode runs first and weight changes are timed with it appended; their
    eager forms stay as fallbacks after everything else; what conflicts with graph-decode stays eager."""
    opts = ["graph-decode", "int8-weight-only", "int4-weight-only", "prune-ffn", "kv-cache"]
    sp = tune.build_space("causal-lm", "cuda", opts=opts, max_space=5000)
    first = sp.candidates[0]
    assert first.label == "graph-decode" and first.steps[0]["name"] == "graph-decode" and first.anchor is None
    assert sp.counts["anchor"]["label"] == "graph-decode"
    index = {c.label: i for i, c in enumerate(sp.candidates)}
    by_label = {c.label: c for c in sp.candidates}
    wo = by_label["int8-weight-only + graph-decode"]
    assert [s["name"] for s in wo.steps] == ["int8-weight-only", "graph-decode"] and wo.anchor == first.ident
    assert wo.parts == [wo.ident] and wo.phase == 0
    eager = by_label["int8-weight-only"]
    assert eager.fallback == first.ident and eager.anchor is None
    fallbacks = [i for i, c in enumerate(sp.candidates) if c.fallback]
    anchored = [i for i, c in enumerate(sp.candidates) if c.anchor]
    assert fallbacks and anchored and max(anchored) < min(fallbacks)  # every eager fallback after the anchored
    kv = by_label["kv-cache:cache=static"]  # kv-cache conflicts with graph-decode: measured eagerly, not a fallback
    assert kv.anchor is None and kv.fallback is None and index["kv-cache:cache=static"] < min(fallbacks)
    # a pair is anchored once, and its parts are the anchored singles
    ffn = "prune-ffn:fraction=0.25,importance=activation"
    pair = by_label[f"{ffn} + int8-weight-only + graph-decode"]
    assert [s["name"] for s in pair.steps] == ["prune-ffn", "int8-weight-only", "graph-decode"]
    assert pair.parts == [by_label[f"{ffn} + graph-decode"].ident, wo.ident]
    # a weight change with a step graph-decode excludes is an eager route: a fallback too
    assert by_label["int8-weight-only + kv-cache:cache=static"].fallback == first.ident
    # a calibrated quantizer (GPTQ at 8B: >100 s of calibration) runs after the cheap and the pruning singles
    gptq = index["int4-weight-only:group_size=128,algorithm=gptq + graph-decode"]
    assert gptq > index[f"{ffn} + graph-decode"] \
        > index["int4-weight-only:group_size=128,algorithm=rtn + graph-decode"]
    for c in sp.candidates:  # every candidate is valid and fully resolved
        r = Recipe(ModelSpec("x"), [OptStep(s["name"], s["params"]) for s in c.steps]).validate("causal-lm", "cuda")
        assert [s.params for s in r.optimizations] == [s["params"] for s in c.steps]
    # no anchor on a CPU, or where the user's opts leave graph-decode out
    assert "anchor" not in tune.build_space("causal-lm", "cpu", opts=opts).counts
    no_gd = tune.build_space("causal-lm", "cuda", opts=opts[1:])
    assert "anchor" not in no_gd.counts and not any(c.anchor or c.fallback for c in no_gd.candidates)


def test_what_the_anchor_refuses_on_cuda_is_known_before_loading():
    """The 8B tune on an H200 spent two trials finding at apply time that int8-dynamic-act / int8-smoothquant cannot
    be compiled on CUDA: now a declared CUDA-only conflict refuses the recipe at validation, and the space keeps
    their eager singles as fallbacks (only if graph-decode fails). On CPU the same pair is valid."""
    sp = tune.build_space("causal-lm", "cuda", opts=["graph-decode", "int8-dynamic-act", "int8-smoothquant",
                                                    "int8-weight-only"], max_space=5000)
    labels = {c.label: c for c in sp.candidates}
    assert "int8-dynamic-act + graph-decode" not in labels and "int8-smoothquant + graph-decode" not in labels
    anchor = sp.candidates[0].ident
    assert labels["int8-dynamic-act"].fallback == anchor and labels["int8-smoothquant"].fallback == anchor
    steps = [OptStep("int8-dynamic-act"), OptStep("compile")]
    with pytest.raises(InputError, match="int8-dynamic-act.*on CUDA.*torch._int_mm"):
        Recipe(ModelSpec("x"), steps).validate("causal-lm", "cuda")
    assert len(Recipe(ModelSpec("x"), steps).validate("causal-lm", "cpu").optimizations) == 2


def test_casts_that_change_nothing_are_skipped_once_the_model_is_loaded():
    """The 8B tune (a bf16 folder) ran bf16:mode=cast (a no-op, and then chosen over graph-decode alone at the same
    speed) and two autocast trials that failed on half weights. Once the baseline has loaded the model they leave
    the queue as skipped, with the reason; the same casts stay for an fp32 model."""
    opts = ["graph-decode", "bf16", "fp16", "int8-weight-only"]
    t, sp, cand, put = gating_tuner("causal-lm", "cuda", opts)
    t.space, logs = sp, []
    t._log = lambda text, level="info": logs.append(text)
    t.model_info = {"dtype": "bfloat16"}
    pending = list(sp.candidates)
    t._skip_for_model(pending)
    left = {c.label for c in pending}
    assert "bf16:mode=cast + graph-decode" not in left and "bf16:mode=cast" not in left
    assert not any("autocast" in label for label in left)
    assert {"fp16:mode=cast + graph-decode", "graph-decode", "int8-weight-only + graph-decode"} <= left
    reasons = {x["label"]: x["reason"] for x in sp.skipped}
    assert reasons["bf16:mode=cast + graph-decode"] == "bf16:mode=cast changes nothing: the model is already bfloat16"
    assert reasons["fp16:mode=autocast + graph-decode"] == \
        "fp16:mode=autocast needs float32 weights; the model is bfloat16"
    assert t.model_skipped == len(sp.candidates) - len(pending) > 0 and sp.counts["skipped"] == len(sp.skipped)
    assert "skipped on this bfloat16 model" in logs[-1]
    fp32 = tune.build_space("causal-lm", "cuda", opts=opts, max_space=5000)
    assert tune_space.model_skips(fp32.candidates, {"dtype": "float32"}) == []


def test_anchored_candidates_are_gated_against_the_anchor():
    t, sp, cand, put = gating_tuner("causal-lm", "cuda", ["graph-decode", "int8-weight-only", "int4-weight-only",
                                                          "prune-ffn"])

    def gate(label):
        return t._gate(cand[label])

    int4 = "int4-weight-only:group_size=128,algorithm=rtn"
    ffn = "prune-ffn:fraction=0.25,importance=activation"
    assert gate("int8-weight-only") is not None  # the eager fallback waits on the anchor, which runs first
    put("graph-decode", gain=4.0, objective=5.0)
    assert "timed under graph-decode instead" in gate("int8-weight-only")
    # once the anchor stands its eager fallbacks leave the queue (counted, not recorded as trials)
    t.space, logs = sp, []
    t._log = lambda text, level="info": logs.append(text)
    pending = list(sp.candidates[1:])
    n_fallback = sum(1 for c in pending if c.fallback)
    t._drop_fallbacks(sp.candidates[0], pending)
    assert n_fallback > 0 and t.fallbacks_dropped == n_fallback and not any(c.fallback for c in pending)
    assert any(c.anchor for c in pending) and f"{n_fallback} eager fallbacks dropped" in logs[-1]
    assert gate("int8-weight-only + graph-decode") is None  # anchored singles always run
    put(f"{int4} + graph-decode", gain=6.0, objective=3.3)
    put(f"{ffn} + graph-decode", gain=5.0, objective=4.0)
    put("int8-weight-only + graph-decode", gain=4.1, objective=4.9)
    # the parts are judged against the anchor (x4), not the eager baseline: x4.1 is within noise of it
    assert "vs graph-decode x4.000" in gate(f"{ffn} + int8-weight-only + graph-decode")
    # gains multiply relative to the anchor, which counts once: 6 x 5 / 4 = 7.5
    both = cand[f"{ffn} + {int4} + graph-decode"]
    assert abs(tune_decide.predicted_gain(both, t.by_ident) - 7.5) < 1e-9
    assert t._gate(both) is None
    # an anchor that failed: the anchored candidates stop and their eager forms run instead
    t.by_ident[cand["graph-decode"].ident] = {**t.trials[0], "status": "failed", "gain": None,
                                              "error": {"kind": "error"}}
    assert "graph-decode failed on its own" in gate(f"{int4} + graph-decode")
    assert gate("int8-weight-only") is None and gate(int4) is None


# ------------------------------------------------------------------ real tunes (tune-worker jobs, tiny models)

# The tests' numbers need not be clean: no re-benchmarking when the shared machine is busy.
QUIET = ["--max-contention", "100"]


def _size_cfg(model, **kw):
    return tune.TuneConfig(recipe=fast_recipe(str(model)), objective="size",
                           accuracy=tune.parse_accuracy_budget("50%"), budget_s=120, opts=["bf16", "prune-l1"],
                           contention_limit=1.0, **kw)


def test_early_stopping_skips_evaluation_of_a_trial_that_cannot_win(tiny_llama):
    events = []
    # a margin of -99 % makes every trial "short of the best": each is benchmarked, then stopped before eval
    cfg = tune.TuneConfig(recipe=fast_recipe(str(tiny_llama)), objective="latency",
                          accuracy=tune.parse_accuracy_budget("perplexity=5%"), budget_s=120, opts=["kv-cache"],
                          prune_margin=-0.99, rebaseline_s=1e-3,  # and re-bench the baseline before each trial
                          contention_limit=1.0)
    rep = tune.Tuner(cfg, lambda t, **k: events.append((t, k))).run()
    assert rep["objective"]["metric"] == "decode_ms_per_token.p50"
    assert [t["label"] for t in rep["trials"]] == ["kv-cache:cache=static", "kv-cache:cache=dynamic"]
    for t in rep["trials"]:
        assert t["status"] == "pruned" and t["ran"] and not t["cached"]
        assert "accuracy not evaluated" in t["reason"] and "short of x" in t["reason"]
        assert t["accuracy"] == {} and not t["feasible"]
        assert t["objective"] == t["decode_ms_per_token_p50"] and t["objective"] > 0
        assert 0 <= t["others_cpu"] <= 1  # other processes' share of the CPU during its benchmark
    assert rep["chosen"] is None and not rep["ok"]
    assert [f["label"] for f in rep["frontier"]] == ["baseline"]
    assert rep["baseline"]["objective"] > 0 and rep["baseline"]["metrics"]["perplexity"] > 0
    first, second = (t["baseline_objective"] for t in rep["trials"])
    assert first != second and rep["baseline"]["objective"] == second  # each trial against a fresh baseline
    types = [t for t, _ in events]
    assert types.index("tune-start") < types.index("trial-start") < types.index("trial") < types.index("frontier")
    assert types[-1] == "result" and events[-1][1]["phase"] == "tune"
    assert types.count("trial-start") == rep["counts"]["run"] == 2
    for t, payload in events:  # every event is a known type whose payload is JSON as the job protocol sends it
        assert t in tune.EVENT_TYPES and json.loads(json.dumps(payload, allow_nan=False)) == payload


def test_cli_tune_end_to_end_session_and_second_run_from_cache(tiny_bert, workdir, capsys):
    from workbench import cli

    argv = ["tune", "--model", str(tiny_bert), "--objective", "size", "--opts", "bf16,prune-l1",
            "--max-accuracy-drop", "cosine=0.05,recall=50%", "--budget", "2m", "--session", "tuned", "--json", *FAST,
            *QUIET]
    assert cli.main(argv) == 0
    rep = json.loads(capsys.readouterr().out)
    by = {t["label"]: t for t in rep["trials"]}
    assert rep["ok"] and rep["chosen"]["label"] == "bf16:mode=cast"
    assert rep["chosen"]["gain"] > 1.9 and rep["chosen"]["accuracy"]["cosine_to_baseline"]["ok"]
    # early stopping on size: decided right after applying, neither benchmarked nor evaluated
    assert by["bf16:mode=autocast"]["status"] == "pruned" and "not benchmarked" in by["bf16:mode=autocast"]["reason"]
    assert by["prune-l1:sparsity=0.5"]["latency_p50_ms"] is None and by["prune-l1:sparsity=0.5"]["ran"]
    # combinations whose parts did not help are not run
    pairs = [t for t in rep["trials"] if t["phase"] == "pair"]
    assert len(pairs) == 6 and all(not t["ran"] and "alone does not improve size" in t["reason"] for t in pairs)
    assert [f["label"] for f in rep["frontier"]] == ["bf16:mode=cast", "baseline"]
    assert rep["counts"]["run"] == 5 and rep["counts"]["cached"] == 0 and rep["stopped"] == "space exhausted"
    assert rep["chosen_recipe"]["optimizations"] == rep["chosen"]["recipe"]
    # the chosen recipe and the report are in the session
    from workbench.core.session import SessionStore

    s = SessionStore().open("tuned")
    assert [o.name for o in s.recipe.optimizations] == ["bf16"] and s.recipe.bench.seq_len == 16
    assert s.results["tunes"][0]["chosen"]["label"] == "bf16:mode=cast"
    # a second identical tune performs zero trials and gives the same answer
    assert cli.main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["counts"]["run"] == 0 and again["counts"]["cached"] == 5
    assert again["chosen"]["label"] == "bf16:mode=cast" and again["chosen"]["objective"] == rep["chosen"]["objective"]
    assert again["baseline"]["cached"] and len(SessionStore().open("tuned").results["tunes"]) == 2


def test_a_killed_worker_costs_one_trial_and_failures_are_cached(tiny_bert, monkeypatch):
    monkeypatch.setenv("OPTBENCH_SELFTEST", "1")
    cfg = _size_cfg(tiny_bert, selftest={"bf16:mode=autocast": "kill", "prune-l1:sparsity=0.1": "raise"})
    rep = tune.Tuner(cfg).run()
    by = {t["label"]: t for t in rep["trials"]}
    assert by["bf16:mode=autocast"]["status"] == "failed" and by["bf16:mode=autocast"]["error"]["kind"] == "killed"
    assert by["prune-l1:sparsity=0.1"]["status"] == "failed"
    assert by["prune-l1:sparsity=0.1"]["error"]["kind"] == "exception"
    assert "selftest" in by["prune-l1:sparsity=0.1"]["error"]["message"]
    assert rep["workers"]["started"] == 2  # one restart for the kill; an exception does not cost the worker
    assert by["prune-l1:sparsity=0.3"]["status"] == "pruned" and by["prune-l1:sparsity=0.3"]["ran"]
    assert rep["chosen"]["label"] == "bf16:mode=cast"
    again = tune.Tuner(cfg).run()
    assert again["counts"]["run"] == 0 and again["counts"]["failed"] == 2 and again["workers"]["started"] == 1


def test_resume_after_the_tune_process_is_killed(tiny_bert, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tune_orchestrator.tempfile, "tempdir", str(scratch))
    code = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
from tests.conftest import fast_recipe
from workbench.core import tune
cfg = tune.TuneConfig(recipe=fast_recipe({str(tiny_bert)!r}), objective="size",
                      accuracy=tune.parse_accuracy_budget("50%"), budget_s=120, opts=["bf16", "prune-l1"],
                      contention_limit=1.0)
tune.Tuner(cfg, lambda t, **k: print(json.dumps({{"type": t, **k}}, allow_nan=False), flush=True)).run()
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, cwd=ROOT)
    worker_pid, done = None, []
    try:
        for line in proc.stdout:
            ev = json.loads(line)
            if ev["type"] == "trial-start":
                worker_pid = ev["worker_pid"]
            if ev["type"] == "trial" and ev["ran"]:
                done.append(ev["label"])
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert done == ["bf16:mode=cast"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the orphaned worker notices and exits
        try:
            if psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"worker {worker_pid} outlived its tune")
    orphans = list(scratch.glob("optbench-tune-*"))
    assert len(orphans) == 1 and (orphans[0] / "owner.pid").read_text() == str(proc.pid)
    rep = tune.Tuner(_size_cfg(tiny_bert)).run()
    assert list(scratch.glob("optbench-tune-*")) == []  # the killed tune's scratch (weight snapshot) swept
    by = {t["label"]: t for t in rep["trials"]}
    assert by["bf16:mode=cast"]["cached"] and not by["bf16:mode=cast"]["ran"]
    assert rep["counts"]["cached"] == 1 and rep["counts"]["run"] == 4
    assert rep["chosen"]["label"] == "bf16:mode=cast"


def test_cli_exit_3_when_no_recipe_meets_the_budget_and_2_on_bad_input(tiny_llama, workdir, capsys):
    from workbench import cli

    base = ["tune", "--model", str(tiny_llama), "--objective", "size", "--budget", "2m", "--json", *FAST, *QUIET]
    # attention kernels do not change the size: nothing improves on the baseline, so no recipe is chosen
    assert cli.main([*base, "--opts", "attention", "--max-accuracy-drop", "perplexity=1%,kl=0.01"]) == 3
    rep = json.loads(capsys.readouterr().out)
    assert rep["ok"] is False and rep["chosen"] is None and rep["chosen_recipe"] is None
    assert rep["counts"]["run"] == 2 and all(t["status"] == "finished" for t in rep["trials"])
    assert all(t["feasible"] and t["gain"] == pytest.approx(1.0) for t in rep["trials"])
    assert set(rep["trials"][0]["accuracy"]) == {"perplexity", "next_token_agreement", "kl_divergence"}
    assert rep["baseline"]["metrics"]["perplexity"] > 0
    for flag, value in (("--max-accuracy-drop", "5x"), ("--budget", "10q"), ("--opts", "nope"),
                        ("--memory-mb", "-1")):
        assert cli.main([*base, flag, value]) == 2
        err = capsys.readouterr().err
        assert f"{flag} {value}" in err and len(err.strip().splitlines()) <= 2


def test_tune_modules_are_torch_free():
    out = subprocess.run([sys.executable, "-c", "import sys, workbench.core.tune, workbench.cli.tune\n"
                          "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                          "('torch', 'transformers', 'textual')))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"


def test_cuda_search_tries_the_gemlite_int8_kernel_only_where_gemlite_imports(monkeypatch):
    """int8-weight-only's kernel is searched on CUDA (GemLite int8 beat torchao's kernel under graph-decode on an
    H200: 1.29x against 1.08x at 1B batch 1), never on a CPU, and only where the gemlite module imports."""
    opts = ["graph-decode", "int8-weight-only"]
    real = tune_space._importable

    def labels(device):
        return {c.label for c in tune.build_space("causal-lm", device, opts=opts).candidates}

    monkeypatch.setattr(tune_space, "_importable", lambda mod: True if mod == "gemlite" else real(mod))
    cuda = labels("cuda")
    assert {"int8-weight-only:kernel=torchao + graph-decode", "int8-weight-only:kernel=gemlite + graph-decode"} <= cuda
    assert not any("kernel" in label for label in labels("cpu"))
    monkeypatch.setattr(tune_space, "_importable", lambda mod: False if mod == "gemlite" else real(mod))
    assert "int8-weight-only + graph-decode" in labels("cuda")  # one value left: the label does not show it
    assert not any("gemlite" in label for label in labels("cuda"))
