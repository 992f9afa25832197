"""A draft model inside graph-decode's loop (speculative:method=draft + graph-decode, spec_draft.py): the tokens are
the model's own greedy tokens, both caches hold the accepted sequence, the counts add up, on the eager loop and with
the captured steps stood in for by eager replays. CPU, fp32; the CUDA graphs run under ``pytest -m gpu``."""

import copy

import torch  # a pinned dependency: a broken install must fail, not skip

from tests.conftest import fast_recipe
from tests.test_spec_lookup import _PricedGate, _ReplayEagerly, cache_is_the_sequence, greedy
from workbench.core import pipeline
from workbench.core.models import load
from workbench.core.optimizations.spec_lookup import CostGate
from workbench.core.optimizations.spec_draft import DraftGreedy
from workbench.core.optimizations.speculative import _Stats

PROMPT = torch.tensor([[101, 7592, 2088, 2003, 1037, 11, 523, 87]])


def other_draft(model):
    """A draft that agrees with the model now and then: the model with its last block's weights perturbed."""
    draft = copy.deepcopy(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in draft.model.layers[-1].parameters():
            p.add_(torch.randn_like(p) * 0.5 * p.abs().mean())
    return draft


def positions_agree(drafter) -> None:
    """After every ``draft`` the position the draft's captured step reads next is its cache's write position (a
    skipped ``_pos.fill_`` must never leave it elsewhere: transformers 5.24's Llama reads the cache's own length, so
    a wrong one would not change the tokens)."""
    inner = drafter.draft

    def checked(token, pos, k, read=True):
        out = inner(token, pos, k, read=read)
        assert int(drafter._pos) == drafter.at == pos + k
        return out

    drafter.draft = checked


def test_the_model_drafting_for_itself_is_always_accepted(tiny_llama):
    """Every draft is the model's own argmax: all K accepted every round, so the K-th draft is fed back to the draft
    before the next round each time (the path a good draft takes most)."""
    loaded = load(str(tiny_llama), None, "cpu")
    stats = _Stats()
    gen = DraftGreedy(loaded.model, copy.deepcopy(loaded.model), 1, 64, 4, stats=stats, mode="eager")
    out = gen.generate(PROMPT, 26)
    assert torch.equal(out, greedy(loaded.model, PROMPT, 26))
    cache_is_the_sequence(loaded.model, gen, out)
    # the draft's cache too: every accepted token up to the newest, but for a K-th draft it has not been fed yet
    fed = min(gen._fed, out.shape[1] - 1)
    assert fed >= out.shape[1] - 1 - 4
    cache_is_the_sequence(gen.drafter.model, gen.drafter, out, rows=fed)
    s = stats.live
    assert s["acceptance_rate"] == 1.0 and s["target_forwards"] == 1 + 5  # prefill, then 5 x (4 + 1) tokens + 1
    assert s["tokens"] == 26


def test_a_fully_accepted_rounds_last_draft_is_fed_with_the_next_rounds_first_step(tiny_llama):
    """Eager loop: after a round that kept all K drafts, the K-th draft and the newest token go through the draft in
    one forward that also yields the next first draft — K draft forwards a round, not K + 1."""
    loaded = load(str(tiny_llama), None, "cpu")
    stats = _Stats()
    draft = copy.deepcopy(loaded.model)
    widths = []
    real = draft.forward

    def counted(*args, **kw):
        widths.append(kw["input_ids"].shape[1])
        return real(*args, **kw)

    draft.forward = counted
    gen = DraftGreedy(loaded.model, draft, 1, 64, 4, stats=stats, mode="eager")
    out = gen.generate(PROMPT, 26)
    assert torch.equal(out, greedy(loaded.model, PROMPT, 26))
    rounds = stats.live["target_forwards"] - 1  # the prefill is the first
    assert rounds == 5 and stats.live["acceptance_rate"] == 1.0
    assert widths[0] == PROMPT.shape[1]  # the draft's prefill
    assert len(widths) == 1 + rounds * 4  # K forwards a round
    assert widths[1:].count(2) == rounds - 1  # every round after the first starts with d_K and the newest token
    cache_is_the_sequence(gen.drafter.model, gen.drafter, out, rows=min(gen._fed, out.shape[1] - 1))


def test_a_draft_that_is_sometimes_wrong_keeps_the_models_tokens(tiny_llama):
    loaded = load(str(tiny_llama), None, "cpu")
    stats = _Stats()
    gen = DraftGreedy(loaded.model, other_draft(loaded.model), 1, 96, 3, stats=stats, mode="eager")
    for n in (40, 17):  # a second call on the same loop: both caches are reset in place
        out = gen.generate(PROMPT, n)
        assert torch.equal(out, greedy(loaded.model, PROMPT, n))
        cache_is_the_sequence(loaded.model, gen, out)
        fed = min(gen._fed, out.shape[1] - 1)
        cache_is_the_sequence(gen.drafter.model, gen.drafter, out, rows=fed)  # rejected drafts' rows overwritten
    s = stats.live
    assert 0.0 < s["acceptance_rate"] < 1.0  # some drafts accepted, some rejected: both paths ran
    assert s["accepted"] == s["tokens"] - s["target_forwards"] and s["tokens"] == 57


def test_graphed_rounds_replay_the_drafts_step_and_the_verify_step(tiny_llama):
    """With graph-decode's graphs (eager replays on this CPU): each round replays the draft's one-token graph K
    times (plus once when the last round's K-th draft must be fed back) and the verify graph once."""
    loaded = load(str(tiny_llama), None, "cpu")
    stats = _Stats()
    gen = DraftGreedy(loaded.model, other_draft(loaded.model), 1, 96, 3, stats=stats, mode="eager")
    verify, drafted = [], []
    token, pos = torch.zeros((1, 1), dtype=torch.long), torch.zeros((1,), dtype=torch.long)
    gen.mode = "graph"
    gen._static_buffers(token, 0)
    gen.graph = _ReplayEagerly(gen._graph_body, verify)
    d = gen.drafter
    d.mode = "graph"
    d._static_buffers(token, pos)
    d.graph = _ReplayEagerly(d._graph_body, drafted)
    positions_agree(d)
    out = gen.generate(PROMPT, 40)
    assert torch.equal(out, greedy(loaded.model, PROMPT, 40))
    cache_is_the_sequence(loaded.model, gen, out)
    cache_is_the_sequence(d.model, d, out, rows=min(gen._fed, out.shape[1] - 1))
    rounds = stats.live["target_forwards"] - 1
    eager_stats = _Stats()  # the same draft in the eager loop: the same rounds, the same acceptance
    DraftGreedy(loaded.model, d.model, 1, 96, 3, stats=eager_stats, mode="eager").generate(PROMPT, 40)
    assert {k: stats.live[k] for k in ("target_forwards", "accepted")} == {
        k: eager_stats.live[k] for k in ("target_forwards", "accepted")}
    fed_back = len(drafted) - 3 * rounds  # one replay per fully accepted round that another round followed
    assert len(verify) == rounds and 0 <= fed_back < rounds


def test_pipeline_runs_a_draft_inside_graph_decode(tiny_llama):
    r = fast_recipe(str(tiny_llama), [("speculative", {"method": "draft", "draft_layers": 1, "num_tokens": 3}),
                                      ("graph-decode", {})])
    report = pipeline.run(r.validate(), lambda *a, **k: None)
    spec, graph = report["optimization_reports"]
    assert spec["greedy_check"]["identical"] is True and spec["greedy_check"]["loop"] == "graph-decode"
    assert graph["speculative"]["method"] == "draft" and "spec_draft.py" in graph["speculative"]["loop"]
    s = spec["stats"]
    n = report["bench"]["new_tokens"]
    assert s["calls"] >= 2 and s["tokens"] == s["calls"] * n and s["tokens_per_target_forward"] >= 1.0


def test_gated_draft_idles_where_it_does_not_pay_and_catches_up_when_it_drafts_again(tiny_llama):
    """gate=auto with a draft: where a drafting round costs 8 steps and the draft is often wrong, most rounds are
    one-token steps of the model and the same tokens cost less than drafting every round; each time drafting
    resumes the draft is first fed the tokens it missed (its cache then holds the accepted sequence again). Where a
    round costs what a step does, drafting goes on. The tokens stay greedy decoding's."""
    loaded = load(str(tiny_llama), None, "cpu")
    ref = greedy(loaded.model, PROMPT, 60)
    draft = other_draft(loaded.model)
    spent, fed_after = {}, {}
    for price in (8.0, 1.0):
        for always in (False, True):
            stats = _Stats()
            gate = _PricedGate({1: 1.0, 4: price}, always=always)
            gen = DraftGreedy(loaded.model, draft, 1, 128, 3, stats=stats, mode="eager", gate=gate)
            caught = []
            catch_up = gen._catch_up

            def checked_catch_up(text, newest, gen=gen, caught=caught, catch_up=catch_up):
                caught.append(newest - gen._fed)
                catch_up(text, newest)  # then the draft's cache holds every token before the newest
                cache_is_the_sequence(draft, gen.drafter, torch.tensor([text]), rows=newest)

            gen._catch_up = checked_catch_up
            for _ in range(2):
                out = gen.generate(PROMPT, 60)
                assert torch.equal(out, ref)
                cache_is_the_sequence(loaded.model, gen, out)
                if gen._start is not None:  # the last round drafted: the draft has followed every token
                    cache_is_the_sequence(draft, gen.drafter, out, rows=min(gen._fed, out.shape[1] - 1))
            spent[price, always] = gate.spent
            fed_after[price, always] = max(caught)
            assert (gate.skipped == 0) == always
    assert spent[8.0, False] < 0.8 * spent[8.0, True]
    assert fed_after[8.0, False] > 1  # drafting resumed after one-token rounds: several tokens fed at once
    assert spent[1.0, False] <= 1.1 * spent[1.0, True]


def test_a_costly_catch_up_makes_the_gate_retry_the_draft_less_often(tiny_llama):
    """Each catch-up of the idle draft reaches the gate (observe_resume); priced at 30 steps instead of nothing, the
    draft resumes less often over the same calls, and the tokens stay greedy decoding's."""
    loaded = load(str(tiny_llama), None, "cpu")
    ref = greedy(loaded.model, PROMPT, 60)
    draft = other_draft(loaded.model)
    resumes = {}
    for price in (0.0, 30.0):
        gate = _PricedGate({1: 1.0, 4: 8.0})
        seen = []

        def priced_resume(seconds, gate=gate, seen=seen, price=price):
            seen.append(seconds)
            CostGate.observe_resume(gate, price)

        gate.observe_resume = priced_resume
        gen = DraftGreedy(loaded.model, draft, 1, 128, 3, stats=_Stats(), mode="eager", gate=gate)
        for _ in range(3):
            assert torch.equal(gen.generate(PROMPT, 60), ref)
        resumes[price] = len(seen)
        assert all(s > 0 for s in seen)
    assert resumes[0.0] > 0 and resumes[30.0] < resumes[0.0]


def test_gated_graphed_rounds_take_the_one_token_graph_and_the_draft_catches_up(tiny_llama):
    """The gate in graph mode (eager replays for the three graphs on this CPU): where drafting costs 8 steps the
    rounds replay the model's one-token graph, the draft's cache is caught up between its graph replays, and the
    tokens stay greedy decoding's."""
    loaded = load(str(tiny_llama), None, "cpu")
    draft = other_draft(loaded.model)
    gen = DraftGreedy(loaded.model, draft, 1, 128, 3, stats=_Stats(), mode="eager",
                      gate=_PricedGate({1: 1.0, 4: 8.0}))
    verify, single, drafted = [], [], []
    token, pos = torch.zeros((1, 1), dtype=torch.long), torch.zeros((1,), dtype=torch.long)
    gen.mode = "graph"
    gen._static_buffers(token, 0)
    gen.graph = _ReplayEagerly(gen._graph_body, verify)
    gen._capture_body = lambda body: _ReplayEagerly(body, single)
    gen._capture_single(token)
    d = gen.drafter
    d.mode = "graph"
    d._static_buffers(token, pos)
    d.graph = _ReplayEagerly(d._graph_body, drafted)
    positions_agree(d)
    caught = []
    catch_up = gen._catch_up

    def checked_catch_up(text, newest):
        caught.append(newest - gen._fed)
        catch_up(text, newest)
        cache_is_the_sequence(draft, d, torch.tensor([text]), rows=newest)

    gen._catch_up = checked_catch_up
    ref = greedy(loaded.model, PROMPT, 60)
    for _ in range(2):
        out = gen.generate(PROMPT, 60)
        assert torch.equal(out, ref)
        cache_is_the_sequence(loaded.model, gen, out)
    assert len(single) > len(verify) > 0 and gen.gate.skipped == len(single)
    assert max(caught) > 1  # drafting resumed after one-token rounds


def test_rounds_that_keep_every_position_move_no_write_position(tiny_llama, monkeypatch):
    """A round whose positions all stand (every draft accepted, or a one-token step) leaves both caches' write
    positions where the next round starts: no rewind of either (on a GPU each was a launch per layer while the
    device waited); a sometimes-wrong draft rewinds both, only after rounds with a rejection. Tokens: greedy's."""
    from workbench.core.optimizations import spec_draft

    loaded = load(str(tiny_llama), None, "cpu")
    wrong = torch.tensor([[11, 523, 87, 4001, 932, 61]])  # a prompt where the perturbed draft is mostly wrong
    for draft, all_kept, prompt in ((copy.deepcopy(loaded.model), True, PROMPT),
                                    (other_draft(loaded.model), False, wrong)):
        ref = greedy(loaded.model, prompt, 40)
        stats = _Stats()
        gen = DraftGreedy(loaded.model, draft, 1, 96, 3, stats=stats, mode="eager")
        model_rewinds, draft_rewinds = [], []
        inner = gen._rewind
        gen._rewind = lambda pos, inner=inner, seen=model_rewinds: (seen.append(pos), inner(pos))
        real = spec_draft.rewind
        monkeypatch.setattr(spec_draft, "rewind", lambda cache, pos, real=real, seen=draft_rewinds: (
            seen.append(pos), real(cache, pos)))
        out = gen.generate(prompt, 40)
        assert torch.equal(out, ref)
        cache_is_the_sequence(loaded.model, gen, out)
        cache_is_the_sequence(draft, gen.drafter, out, rows=min(gen._fed, out.shape[1] - 1))
        rounds = stats.live["target_forwards"] - 1
        if all_kept:  # the prompt's end once, then never
            assert model_rewinds == [prompt.shape[1]] and draft_rewinds == []
        else:
            assert 0 < stats.live["acceptance_rate"] < 1
            assert 1 < len(model_rewinds) <= 1 + rounds and 0 < len(draft_rewinds) <= rounds
