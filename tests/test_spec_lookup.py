"""Prompt-lookup speculation inside graph-decode's loop (speculative:method=prompt-lookup + graph-decode): the
proposal rule, tokens equal to plain greedy decoding, the counts, and the recipe rules. CPU, fp32, eager loop; the
compiled and CUDA-graph verify step runs under ``pytest -m gpu`` (tests/test_opt_gpu.py)."""

import pytest

import torch  # a pinned dependency: a broken install must fail, not skip

from tests.conftest import fast_recipe
from workbench.core import pipeline
from workbench.core.errors import InputError
from workbench.core.models import load
from workbench.core.optimizations.spec_lookup import CostGate, LookupGreedy, propose, propose_match
from workbench.core.optimizations.speculative import _Stats
from workbench.core.recipe import ModelSpec, OptStep, Recipe


def test_propose_takes_what_followed_the_earliest_longest_match():
    assert propose([5, 1, 2, 3, 9, 1, 2, 7, 1, 2], 3, 2) == [3, 9, 1]  # "1 2" first seen at 1: 3 9 1 followed
    assert propose([5, 1, 2, 3, 9, 4, 2], 3, 2) == [3, 9, 4]  # no "4 2" earlier: the 1-gram "2" matches
    assert propose([1, 2, 3, 4], 3, 3) == []  # nothing repeats
    assert propose([7, 7], 4, 3) == [7]  # a continuation shorter than k
    assert propose([3], 2, 2) == []
    assert propose_match([5, 1, 2, 3, 9, 1, 2, 7, 1, 2], 3, 2) == ([3, 9, 1], 2)
    assert propose_match([5, 1, 2, 3, 9, 4, 2], 3, 2) == ([3, 9, 4], 1)
    assert propose_match([1, 2, 3, 4], 3, 3) == ([], 0)


def test_cost_gate_verifies_only_where_the_tokens_pay_for_the_wider_round():
    gate = CostGate(explore_share=0.25)
    assert gate.verify(1, 11)  # nothing known: try it
    for _ in range(3):  # 1-gram matches: 1.5 tokens a round; 3-gram matches: 8
        gate.observe(11, 1, 0.003, 1)
        gate.observe(11, 1, 0.003, 2)
        gate.observe(11, 3, 0.003, 8)
    assert gate.seconds == {11: pytest.approx(0.003)} and 1 not in gate.seconds
    assert not gate.verify(1, 11)  # the one-token step's cost is unknown: measure it (its first round is not timed)
    gate.observe(1, 1, 0.5, 1)  # a first round (compiling, say) is not taken as the step's cost
    assert 1 not in gate.seconds
    gate.observe(1, 1, 0.001, 1)
    assert gate.seconds[1] == pytest.approx(0.001)
    # a verify round costs 3 steps: 1.5 tokens do not pay for it, 8 do
    assert gate.verify(3, 11)
    # 1-gram matches are re-tried once the time saved (a quarter step per skip here) covers what a try loses
    loss = 3.0 - gate.tokens[1]  # in steps
    decisions = [gate.verify(1, 11) for _ in range(20)]
    tries = [i for i, d in enumerate(decisions) if d]
    assert tries and tries[0] == int(loss / 0.25 - 1e-9) and tries[1] - tries[0] == tries[0] + 1
    assert gate.skipped == 1 + 20 - len(tries)  # the measuring round and the skips
    # a stall counts as at most 4x the average, and the averages follow what the rounds do
    gate.observe(1, 1, 10.0, 1)
    assert gate.seconds[1] == pytest.approx(0.8 * 0.001 + 0.2 * 0.004)
    for _ in range(20):  # the verify round gets cheap (a CPU: about 1.2 steps): 1.5 tokens now pay
        gate.observe(11, 1, 0.0012, 1)
        gate.observe(11, 1, 0.0012, 2)
    assert gate.verify(1, 11)
    summary = gate.summary()
    assert summary["skipped_rounds"] == gate.skipped and set(summary["round_ms"]) == {"1", "11"}
    assert set(summary["tokens_per_verify_by_match"]) == {"1", "3"}


def greedy(model, ids, n):
    with torch.inference_mode():
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, pad_token_id=0)


def cache_is_the_sequence(model, gen, out, rows: int | None = None) -> None:
    """The static cache holds exactly the accepted sequence: row i is token i's keys and values, as one prefill of
    the output computes them (rejected drafts' rows were overwritten, not left in the middle), in every layer;
    ``rows``: only the first ones (default: all but the last token, which is not in the cache yet)."""
    n = out.shape[1] - 1 if rows is None else rows
    with torch.inference_mode():
        full = model(input_ids=out[:, :n], use_cache=True).past_key_values
    for mine, ref in zip(gen.cache.layers, full.layers):
        torch.testing.assert_close(mine.keys[:, :, :n], ref.keys, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(mine.values[:, :, :n], ref.values, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("num_tokens", [1, 4])
def test_lookup_loop_gives_the_models_own_greedy_tokens(tiny_llama, num_tokens):
    loaded = load(str(tiny_llama), None, "cpu")
    stats = _Stats()
    gen = LookupGreedy(loaded.model, 1, 128, num_tokens, 3, stats=stats, mode="eager")
    repeating = torch.tensor([[101, 2023, 2003, 1037, 3231, 1997, 1996, 2524, 1012] * 6])
    stamps = []
    out = gen.generate(repeating, 40, on_step=lambda n=1: stamps.extend([1] * n))
    assert torch.equal(out, greedy(loaded.model, repeating, 40)) and len(stamps) == 40
    cache_is_the_sequence(loaded.model, gen, out)
    s = stats.live
    assert s["tokens"] == 40 and s["target_forwards"] < 40  # the repeating prompt: drafts were accepted
    assert 0 < s["accepted"] <= s["proposed"] and s["accepted"] == s["tokens"] - s["target_forwards"]
    # a second call on the same loop (the cache is reset in place) and a prompt with nothing to look up
    plain = torch.tensor([[11, 523, 87, 4001, 932, 61]])
    before = stats.live["target_forwards"]
    out = gen.generate(plain, 24)
    assert torch.equal(out, greedy(loaded.model, plain, 24))
    cache_is_the_sequence(loaded.model, gen, out)  # rounds with nothing proposed run a one-token step here
    assert stats.live["target_forwards"] > before
    with pytest.raises(ValueError, match="batch 1"):
        gen.generate(torch.cat([plain, plain]), 4)


def test_pipeline_runs_prompt_lookup_inside_graph_decode(tiny_llama):
    r = fast_recipe(str(tiny_llama), [("speculative", {"method": "prompt-lookup", "num_tokens": 3}),
                                      ("graph-decode", {"mode": "eager"})])
    report = pipeline.run(r.validate(), lambda *a, **k: None)
    spec, graph = report["optimization_reports"]
    assert graph["speculative"]["method"] == "prompt-lookup" and graph["speculative"]["num_tokens"] == 3
    check = spec["greedy_check"]
    assert check["loop"] == "graph-decode" and check["identical"] is True and check["tokens"] == 48
    s = spec["stats"]  # the benchmark's calls, counted by the graphed loop (the check's are not)
    n = report["bench"]["new_tokens"]
    assert s["calls"] >= 2 and s["tokens"] == s["calls"] * n and s["target_forwards"] <= s["tokens"]
    assert report["optimized"]["decode_ms_per_token"]["p50"] > 0


def test_every_method_composes_with_graph_decode_but_not_with_compile():
    def recipe(method):
        return Recipe(ModelSpec("x"), [OptStep("speculative", {"method": method}), OptStep("graph-decode", {})])

    for method in ("prompt-lookup", "draft", "draft-head"):  # each runs inside graph-decode's loop
        assert recipe(method).validate("causal-lm", "cpu").optimizations[1].name == "graph-decode"
    with pytest.raises(InputError, match="cannot be combined"):
        Recipe(ModelSpec("x"), [OptStep("speculative", {"method": "prompt-lookup"}),
                                OptStep("compile", {})]).validate("causal-lm", "cpu")


def test_rounds_with_nothing_proposed_are_one_token_steps_on_cpu(tiny_llama, monkeypatch):
    from workbench.core.optimizations import spec_lookup

    monkeypatch.setattr(spec_lookup, "propose_match", lambda *a: ([], 0))
    loaded = load(str(tiny_llama), None, "cpu")
    stats = _Stats()
    gen = LookupGreedy(loaded.model, 1, 64, 4, 3, stats=stats, mode="eager")
    ids = torch.tensor([[11, 523, 87, 4001, 932, 61]])
    out = gen.generate(ids, 16)
    assert torch.equal(out, greedy(loaded.model, ids, 16))
    cache_is_the_sequence(loaded.model, gen, out)
    s = stats.live
    assert s["target_forwards"] == s["tokens"] == 16 and s["proposed"] == 0 and s["accepted"] == 0


def test_cost_gate_counts_a_drafters_catch_up_in_what_a_retry_costs():
    """A round of 4 positions at 3 steps giving 1.72 tokens loses 1.28 steps; at 5 % of a step saved per skip the
    gate re-tries on the 26th call (25 skips). A drafter that needs 10 steps to catch up on what it missed makes a
    re-try cost 11.28 steps: 225 skips between re-tries."""

    def skips_until_retry(resume):
        gate = CostGate()
        gate.seconds, gate.tokens = {1: 1.0, 4: 3.0}, {0: 1.72}
        if resume is not None:
            gate.observe_resume(resume)
        n = 0
        while not gate.verify(0, 4):
            n += 1
        return n

    assert skips_until_retry(None) == 25
    assert skips_until_retry(10.0) == 225
    gate = CostGate()
    gate.observe_resume(0.004)
    assert gate.summary()["resume_ms"] == 4.0


class _PricedGate(CostGate):
    """A gate that sees a fixed price per round width instead of this shared CPU's clock, and adds up the price of
    the rounds it saw; ``always``: one that verifies whatever was found (what gate=off does), priced the same way."""

    def __init__(self, prices: dict, always: bool = False) -> None:
        super().__init__()
        self.prices, self.always, self.spent = prices, always, 0.0

    def verify(self, match, positions):
        return True if self.always else super().verify(match, positions)

    def observe(self, positions, match, seconds, tokens):
        self.spent += self.prices[positions]
        super().observe(positions, match, self.prices[positions], tokens)


def test_gated_loop_skips_drafts_that_do_not_pay_and_stays_the_models_own(tiny_llama):
    """speculative:gate=auto in the loop: where a verify round costs 8 steps, rounds whose matches gave little
    become one-token steps and the same tokens cost less than verifying everything found; where a verify round costs
    what a step does, the gate costs at most what it spends finding that out. Either way the tokens are greedy
    decoding's and the cache the accepted sequence."""
    loaded = load(str(tiny_llama), None, "cpu")
    ids = torch.tensor([[11, 523, 87, 4001, 932, 61, 87, 4001, 932, 11, 523]])
    ref = greedy(loaded.model, ids, 48)
    spent = {}
    for verify_price in (8.0, 1.0):
        for always in (False, True):
            stats = _Stats()
            gate = _PricedGate({1: 1.0, 5: verify_price}, always=always)
            gen = LookupGreedy(loaded.model, 1, 128, 4, 3, stats=stats, mode="eager", gate=gate)
            for _ in range(2):  # the gate keeps what it learned from call to call
                out = gen.generate(ids, 48)
                assert torch.equal(out, ref)
                cache_is_the_sequence(loaded.model, gen, out)
            assert stats.live["gate"]["skipped_rounds"] == gate.skipped
            assert (gate.skipped == 0) == always
            spent[verify_price, always] = gate.spent
    assert spent[8.0, False] < 0.8 * spent[8.0, True]
    assert spent[1.0, False] <= 1.1 * spent[1.0, True]


def test_spec_diag_splits_a_round_and_leaves_the_loop_as_it_was(tiny_llama):
    """benchmarks/spec_diag.py's round split (the GPU question: where a verify round's time goes): every round is
    counted once, the parts are within the round, and the loop's own methods are back afterwards."""
    import sys

    from tests.conftest import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from spec_diag import split_rounds

    loaded = load(str(tiny_llama), None, "cpu")
    gen = LookupGreedy(loaded.model, 1, 128, 4, 3, stats=_Stats(), mode="eager")
    repeating = torch.tensor([[101, 2023, 2003, 1037, 3231, 1997, 1996, 2524, 1012] * 4])
    row = split_rounds(gen, repeating, 20, 2, torch, lambda: None)
    assert row["rounds"] == row["stats"]["target_forwards"] - 2  # the two prompts' forwards are not rounds
    assert row["tokens"] == 40 and row["tokens_per_round"] > 1  # a repeating prompt: drafts accepted
    assert 0 < sum(row["host_ms_per_round"].values()) <= row["wall_ms_per_round"]
    assert row["prefill_ms_per_call"] > 0
    assert not {"_propose", "_verify", "_rewind", "_prefill"} & set(vars(gen))
    assert torch.equal(gen.generate(repeating, 20), greedy(loaded.model, repeating, 20))


class _ReplayEagerly:
    """A stand-in for a captured CUDA graph on a CPU: replay() runs the body it was made from."""

    def __init__(self, body, count: list) -> None:
        self.body, self.count = body, count

    def replay(self) -> None:
        self.count.append(1)
        self.body()


def test_graphed_rounds_with_nothing_proposed_take_the_one_token_graph(tiny_llama):
    """With graph-decode's graphs (stood in for by eager replays on this CPU): a round that proposes nothing replays
    the one-token graph, not the K + 1 verify graph (on an H200 a verify round cost about 3x a step), the rounds with
    drafts the verify graph; the tokens stay the model's own and the cache the accepted sequence."""
    loaded = load(str(tiny_llama), None, "cpu")
    stats = _Stats()
    gen = LookupGreedy(loaded.model, 1, 128, 4, 3, stats=stats, mode="eager")
    gen.mode = "graph"  # what a CUDA run has after capture, with the eager step in the graphs' place
    verify, single = [], []
    gen._capture_body = lambda body: _ReplayEagerly(body, single)
    token = torch.zeros((1, 1), dtype=torch.long)
    gen._static_buffers(token, 0)
    gen.graph = _ReplayEagerly(gen._graph_body, verify)
    gen._capture_single(token)
    assert isinstance(gen.single, _ReplayEagerly)
    rounds = []
    lookup = gen._propose
    gen._propose = lambda text: [] if len(rounds.append(1) or rounds) % 2 else lookup(text)  # every other finds none
    plain = torch.tensor([[11, 523, 87, 4001, 932, 61]])
    out = gen.generate(plain, 24)
    assert torch.equal(out, greedy(loaded.model, plain, 24))
    cache_is_the_sequence(loaded.model, gen, out)
    assert len(single) == (len(rounds) + 1) // 2 and len(single) + len(verify) == len(rounds)
    assert stats.live["target_forwards"] == len(rounds) + 1  # the prompt's forward and one per round
    # the one-token graph not captured: every round takes the verify graph
    gen.single, counts = None, (len(verify), len(single), stats.live["target_forwards"])
    assert torch.equal(gen.generate(plain, 24), out)
    assert len(single) == counts[1] and len(verify) - counts[0] == stats.live["target_forwards"] - counts[2] - 1
    gen._propose, gen.single = lookup, _ReplayEagerly(gen._single_body, single)
    repeating = torch.tensor([[101, 2023, 2003, 1037, 3231, 1997, 1996, 2524, 1012] * 6])
    before = len(verify)
    out = gen.generate(repeating, 40)
    assert torch.equal(out, greedy(loaded.model, repeating, 40)) and len(verify) > before
    cache_is_the_sequence(loaded.model, gen, out)


def test_warmups_before_a_capture_start_from_the_prompts_end(tiny_llama):
    """Before each warm-up of a captured step the cache's write position goes back to the prompt's end: the
    warm-ups of the verify and the one-token steps would otherwise advance it by 3 x (K + 2) rows and run past the
    cache's last row for a wide K."""
    loaded = load(str(tiny_llama), None, "cpu")
    gen = LookupGreedy(loaded.model, 1, 64, 8, 3, stats=_Stats(), mode="eager")
    ids = torch.tensor([[11, 523, 87, 4001, 932, 61]])
    with torch.inference_mode():
        gen.cache.reset()
        gen._prefill(ids, ids.shape[1], ids.device)
        gen._capture_at = ids.shape[1]
        lengths = [layer.cumulative_length for layer in gen.cache.layers]
        for _ in range(3):  # what three warm-ups of the 9-position verify step do to the write position
            gen._before_warmup()
            gen._verify([61] * 9, ids.shape[1], ids.device)
            assert all(int(n) == ids.shape[1] + 9 for n in lengths)
        gen._capture_at = None
        gen._before_warmup()  # outside a capture: nothing moves
        assert all(int(n) == ids.shape[1] + 9 for n in lengths)


def test_rewind_moves_every_layers_write_position_in_place(tiny_llama):
    """rewind: each layer's write position (a tensor a captured graph reads) set in place, in one multi-tensor op."""
    from transformers import StaticCache

    from workbench.core.optimizations.spec_lookup import rewind

    loaded = load(str(tiny_llama), None, "cpu")
    cache = StaticCache(config=loaded.model.config, max_cache_len=32)
    ids = torch.tensor([[11, 523, 87, 4001, 932, 61]])
    with torch.inference_mode():
        loaded.model(input_ids=ids, cache_position=torch.arange(ids.shape[1]), past_key_values=cache,
                     use_cache=True)
    lengths = [layer.cumulative_length for layer in cache.layers]
    assert len(lengths) > 1 and all(int(x) == ids.shape[1] for x in lengths)
    rewind(cache, 3)
    assert [layer.cumulative_length for layer in cache.layers] == lengths  # the same tensors
    assert [int(x) for x in lengths] == [3] * len(lengths)
