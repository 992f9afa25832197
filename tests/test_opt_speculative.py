"""Speculative decoding: the output is the model's own (greedy, token for token), the counts add up, and what it
cannot do is refused before anything runs."""

import pytest

import torch  # a pinned dependency: a broken install must fail, not skip

from tests.conftest import fast_recipe
from workbench.core import optimizations, pipeline
from workbench.core.errors import InputError
from workbench.core.models import load
from workbench.core.optimizations.context import ApplyContext
from workbench.core.recipe import ModelSpec, OptStep, Recipe


def speculative(loaded, **params):
    spec = optimizations.get("speculative")
    ctx = ApplyContext("cpu", loaded.task, loaded.tokenizer)
    ctx.extra["generate_kwargs"] = {}
    rep = spec.apply(loaded.model, spec.resolve(params), ctx).report
    return rep, ctx.extra["generate_kwargs"]["optbench_generator"](1, 64)


def greedy(model, ids, n):
    with torch.inference_mode():
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, pad_token_id=0)


def spy_on_distill(monkeypatch) -> dict:
    """The batches distill.train is given land in the returned dict (key "batches"); training runs as it would."""
    from workbench.core.optimizations import distill

    seen: dict = {}
    real_train = distill.train

    def spy(*args, batches=None, **kw):
        seen["batches"] = batches
        return real_train(*args, batches=batches, **kw)

    monkeypatch.setattr(distill, "train", spy)
    return seen


@pytest.mark.parametrize("params", [{"method": "prompt-lookup", "ngram": 2},
                                    {"method": "draft", "draft_layers": 1, "confidence": 0.0},
                                    {"method": "draft", "draft_layers": 1, "draft_dtype": "bf16"}])
def test_output_is_the_models_own_greedy_tokens(tiny_llama, params):
    loaded = load(str(tiny_llama), None, "cpu")
    rep, gen = speculative(loaded, **params)
    assert rep["greedy_check"]["identical"] is True and rep["greedy_check"]["tokens"] == 48
    # a prompt that repeats itself, so prompt lookup finds n-grams to propose
    row = torch.tensor([[101, 2023, 2003, 1037, 3231, 1997, 1996, 2524, 1012] * 6])
    stamps = []
    out = gen.generate(row, 24, on_step=lambda n=1: stamps.extend([1] * n))
    assert torch.equal(out, greedy(loaded.model, row, 24))
    assert len(stamps) == 24  # one stamp per token handed out, however many a round accepted
    s = rep["stats"]
    assert s["calls"] == 1 and s["tokens"] == 24 and 1 <= s["target_forwards"] <= 24
    assert s["accepted"] == s["tokens"] - s["target_forwards"] and s["accepted"] <= s["proposed"]


def test_a_draft_identical_to_the_model_is_always_accepted(tiny_llama):
    """The model drafting for itself: every drafted token is the model's own argmax, so all are accepted and each
    verify pass yields the drafts plus one."""
    loaded = load(str(tiny_llama), None, "cpu")
    rep, gen = speculative(loaded, method="draft", draft=str(tiny_llama), num_tokens=4, confidence=0.0,
                           draft_dtype="model")
    assert rep["draft"] == str(tiny_llama) and rep["draft_cost_ratio"] == pytest.approx(1.0)
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037]])
    out = gen.generate(ids, 21)
    assert torch.equal(out, greedy(loaded.model, ids, 21))
    s = rep["stats"]
    assert s["acceptance_rate"] == 1.0 and s["tokens_per_target_forward"] >= 4.0


def test_pipeline_reports_speculation_and_exports_the_model(tiny_llama, tmp_path):
    r = fast_recipe(str(tiny_llama), [("speculative", {"method": "draft", "draft_layers": 1})])
    report = pipeline.run(r.validate(), lambda *a, **k: None, artifact_dir=str(tmp_path / "art"))
    rep = report["optimization_reports"][0]
    assert rep["greedy_check"]["identical"] is True
    s = rep["stats"]
    n = report["bench"]["new_tokens"]
    assert s["calls"] >= 2 and s["tokens"] == s["calls"] * n  # warm-up and timed calls, every token counted
    assert 0.0 <= s["acceptance_rate"] <= 1.0 and s["tokens_per_target_forward"] >= 1.0
    assert report["optimized"]["decode_ms_per_token"]["p50"] > 0
    assert report["export"]["verified"]  # the model itself: speculation is a runtime setting


def test_refusals_before_anything_runs(tiny_llama, tmp_path):
    def recipe(opts, batch=None):
        r = fast_recipe(str(tiny_llama), opts)
        r.bench.batch = batch
        return r.validate("causal-lm", "cpu")

    with pytest.raises(InputError, match="^speculative: .*expected batch 1"):
        recipe([("speculative", {})], batch=4)
    with pytest.raises(InputError, match="cannot be combined with"):
        recipe([("speculative", {}), ("compile", {})])
    with pytest.raises(InputError, match="method='beam'"):
        recipe([("speculative", {"method": "beam"})])
    with pytest.raises(InputError, match="does not apply to encoder"):
        Recipe(ModelSpec("x"), [OptStep("speculative", {})]).validate("encoder", "cpu")
    loaded = load(str(tiny_llama), None, "cpu")
    with pytest.raises(InputError, match="draft_layers=2: the model has 2 blocks"):
        speculative(loaded, draft_layers=2)


def test_a_draft_with_another_vocabulary_is_refused(tiny_llama, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    other = tmp_path / "other"
    LlamaForCausalLM(cfg).save_pretrained(other)
    from tests.fixtures.tiny import demo_tokenizer

    demo_tokenizer().save_pretrained(other)
    loaded = load(str(tiny_llama), None, "cpu")
    with pytest.raises(InputError, match=r"draft=.*other: its vocabulary differs"):
        speculative(loaded, draft=str(other))


def test_a_shrunk_draft_head_keeps_its_rows_and_the_output_stays_the_models(tiny_llama):
    """draft_vocab=N (FR-Spec): the draft's head keeps N rows — the built-in text's most frequent tokens first —
    whose logits are the full head's; the others can never be drafted; verification keeps the output exact."""
    from workbench.core.data import builtin_text
    from workbench.core.optimizations.speculative import frequent_tokens, shrink_head

    loaded = load(str(tiny_llama), None, "cpu")
    tok, vocab = loaded.tokenizer, loaded.model.get_output_embeddings().weight.shape[0]
    keep = frequent_tokens(tok, 64, vocab)
    assert len(keep) == 64 == len(set(keep)) and keep == sorted(keep) and all(0 <= i < vocab for i in keep)
    ids = tok(builtin_text())["input_ids"]
    commonest = max(set(ids), key=lambda i: (ids.count(i), -i))
    assert commonest in keep and all(i in keep for i in tok.all_special_ids if i < vocab)

    draft = load(str(tiny_llama), None, "cpu").model.eval()
    h = torch.randn(1, 3, draft.config.hidden_size)
    with torch.inference_mode():
        full = draft.get_output_embeddings()(h)
    rep = shrink_head(draft, 64, tok)
    assert rep == {"kept": 64, "of": vocab, "head_fraction": round(64 / vocab, 4)}
    with torch.inference_mode():
        small = draft.get_output_embeddings()(h)
    assert small.shape == full.shape
    kept = torch.tensor(keep)
    torch.testing.assert_close(small[..., kept], full[..., kept], rtol=1e-5, atol=1e-5)
    others = torch.ones(vocab, dtype=torch.bool)
    others[kept] = False
    assert bool((small[..., others] == torch.finfo(small.dtype).min).all())
    assert int(small.argmax(-1).flatten()[0]) in keep  # a token outside the kept rows is never drafted

    rep, gen = speculative(loaded, method="draft", draft=str(tiny_llama), draft_vocab=64, confidence=0.0,
                           draft_dtype="model")
    assert rep["draft_vocab"]["kept"] == 64 and rep["greedy_check"]["identical"] is True
    row = torch.tensor([[101, 7592, 2088, 2003, 1037]])
    assert torch.equal(gen.generate(row, 16), greedy(loaded.model, row, 16))


def test_a_distilled_draft_trains_on_the_models_own_replies(tiny_llama, monkeypatch):
    """draft_chats: the draft's training windows are chat turns ending in the model's own greedy replies (checked
    token for token against ``generate``), alternating with built-in text windows, held-out pair first; the
    distillation sees exactly those windows and the output stays the model's own."""
    loaded = load(str(tiny_llama), None, "cpu")
    seen = spy_on_distill(monkeypatch)
    rep, gen = speculative(loaded, method="draft", draft_layers=1, distill_steps=3, draft_chats=3, confidence=0.0)
    data = rep["distill_data"]
    assert data["chat_windows"] >= 1 and data["window"] == 256
    batches = seen["batches"]
    assert len(batches) == 2 * data["chat_windows"]  # (chat, text) pairs, the held-out pair first
    assert rep["distill"]["steps_done"] == 3 and rep["distill"]["tokens_seen"] == 3 * 256
    chat = batches[0]["input_ids"]  # a held-out chat window: its last 128 tokens are the model's greedy reply
    prompt_end = chat[:, :128]
    with torch.inference_mode():
        again = loaded.model.generate(input_ids=prompt_end, attention_mask=torch.ones_like(prompt_end),
                                      max_new_tokens=1, do_sample=False, pad_token_id=0)
    assert int(again[0, -1]) == int(chat[0, 128])  # the reply's first token is the model's argmax after the prompt
    assert torch.equal(batches[0]["labels"], chat) and batches[1]["input_ids"].shape == (1, 256)
    assert rep["greedy_check"]["identical"] is True
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037]])
    assert torch.equal(gen.generate(ids, 12), greedy(loaded.model, ids, 12))


def test_a_draft_distilled_on_the_text_alone_keeps_the_old_data(tiny_llama):
    loaded = load(str(tiny_llama), None, "cpu")
    rep, _ = speculative(loaded, method="draft", draft_layers=1, distill_steps=2, draft_chats=0)
    assert "distill_data" not in rep and rep["distill"]["tokens_seen"] == 2 * 2 * 128  # batch 2 x 128 tokens


def test_an_fp32_model_on_cuda_gets_the_verify_precision_note(tiny_llama):
    from workbench.core.optimizations.speculative import fp32_verify_note

    model = load(str(tiny_llama), None, "cpu").model
    assert fp32_verify_note(model, "cpu") is None  # a CPU's several-position fp32 matmuls are what it has
    note = fp32_verify_note(model, "cuda:0")
    assert "fp32" in note and "--opt bf16" in note
    assert fp32_verify_note(model.to(torch.bfloat16), "cuda") is None


def test_a_bf16_models_draft_trains_on_fp32_master_weights_then_runs_in_bf16(tiny_llama, monkeypatch):
    """AdamW's steps (~lr) are below a bf16 weight's resolution: the draft of a bf16 model is distilled in fp32
    under bf16 autocast, then cast back to run beside the model."""
    from workbench.core.optimizations import _common, distill
    from workbench.core.optimizations._common import float_dtype

    loaded = load(str(tiny_llama), None, "cpu")
    _common.cast(loaded.model, torch.bfloat16)
    seen = {}
    real_train = distill.train

    def spy(teacher, student, mapping, task, tokenizer, params, *args, **kw):
        seen.update(student=float_dtype(student), teacher=float_dtype(teacher), precision=params["precision"])
        return real_train(teacher, student, mapping, task, tokenizer, params, *args, **kw)

    monkeypatch.setattr(distill, "train", spy)
    rep, gen = speculative(loaded, method="draft", draft_layers=1, distill_steps=2, draft_chats=0)
    assert seen == {"student": torch.float32, "teacher": torch.bfloat16, "precision": "bf16"}
    assert rep["distill_precision"] == "fp32 master weights, bf16 autocast" and rep["distill"]["steps_done"] == 2
    assert rep["draft_dtype"] == "bfloat16"
    assert all(p.dtype == torch.bfloat16 for p in gen.draft.parameters() if p.is_floating_point())
    assert rep["greedy_check"]["identical"] is True


def test_an_fp32_models_draft_trains_in_fp32(tiny_llama):
    loaded = load(str(tiny_llama), None, "cpu")
    rep, _ = speculative(loaded, method="draft", draft_layers=1, distill_steps=1, draft_chats=0)
    assert "distill_precision" not in rep and rep["distill"]["steps_done"] == 1


def test_chat_turns_are_distinct_passages_under_changing_instructions():
    """The draft's chat turns: ~700 built-in passages, each turn a (passage, instruction) pair not seen before —
    thousands of distinct prompts, so a GPU's 2,048 replies are not a few passages memorised."""
    from workbench.core.optimizations.calibration import passages
    from workbench.core.optimizations.spec_head import INSTRUCTIONS, chat_turns

    texts = passages(10_000)
    assert len(texts) > 500 and all(450 <= len(t) <= 900 for t in texts)
    turns = chat_turns(2048)
    assert len(turns) == 2048 and len(set(turns)) == 2048
    assert {t.split("\n\n", 1)[0] for t in turns} == set(INSTRUCTIONS)
    assert len(chat_turns(10**6)) == len(texts) * len(INSTRUCTIONS)  # every pair once, then no more


def test_a_draft_distils_several_reply_windows_a_step(tiny_llama, monkeypatch):
    """draft_batch: each distillation step takes that many chat windows (and the text batch between them that
    many text windows); the held-out agreement is read before and after."""
    loaded = load(str(tiny_llama), None, "cpu")
    seen = spy_on_distill(monkeypatch)
    rep, gen = speculative(loaded, method="draft", draft_layers=1, distill_steps=2, draft_chats=8, draft_batch=2,
                           confidence=0.0)
    data = rep["distill_data"]
    assert data["batch"] == 2 and data["chat_turns"] == 8 and data["heldout_windows"] == 4
    assert all(b["input_ids"].shape == (2, 256) for b in seen["batches"])
    assert len(seen["batches"]) == 2 * data["chat_windows"] // 2
    assert rep["distill"]["tokens_seen"] == 2 * 2 * 256
    for key in ("heldout_agreement_before", "heldout_agreement_after"):
        assert 0.0 <= rep[key] <= 1.0
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037]])
    assert torch.equal(gen.generate(ids, 12), greedy(loaded.model, ids, 12))


def test_reply_agreement_counts_the_models_own_next_tokens(tiny_llama):
    """1.0 for the model against itself; a draft with another (random) LM head agrees on few reply positions."""
    import copy

    from workbench.core.optimizations._spec_student import REPLY, reply_agreement

    model = load(str(tiny_llama), None, "cpu").model
    ids = torch.randint(5, 1000, (2, REPLY + 16), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids}
    assert reply_agreement(model, model, batch, None) == 1.0
    other = copy.deepcopy(model)
    head = model.get_output_embeddings()
    torch.manual_seed(1)
    other.set_output_embeddings(torch.nn.Linear(head.in_features, head.out_features, bias=False))
    assert reply_agreement(model, other, batch, None) < 0.5


def test_draft_batch_auto_fits_the_logits_on_a_gpu_and_is_one_on_a_cpu():
    from types import SimpleNamespace

    from workbench.core.optimizations._spec_student import draft_batch_size

    def model(vocab):
        return SimpleNamespace(get_output_embeddings=lambda: SimpleNamespace(weight=torch.empty(vocab, 1)))

    assert draft_batch_size({"draft_batch": 0}, model(49152), "cuda:0") == 32
    assert draft_batch_size({"draft_batch": 0}, model(128256), "cuda") == 16
    assert draft_batch_size({"draft_batch": 0}, model(49152), "cpu") == 1
    assert draft_batch_size({"draft_batch": 5}, model(49152), "cpu") == 5


class _Writes:
    """A stand-in model whose sampled continuations are given rows (the user turns it 'writes')."""

    def __init__(self, rows):
        self.rows, self.calls = rows, 0

    def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
        assert kw["do_sample"] is True and input_ids.shape[0] == len(self.rows)
        self.calls += 1
        tail = torch.tensor([(r + [0] * max_new_tokens)[:max_new_tokens] for r in self.rows])
        return torch.cat([input_ids, tail], dim=1)


def test_the_models_own_requests_end_at_its_end_of_turn_and_are_not_repeated(tiny_llama):
    """self_turns (Magpie): what the model samples after its template's user header, cut at its end-of-turn token;
    a turn it did not close, a repeat, or a few characters are dropped; the caller's random state is untouched."""
    from workbench.core.optimizations.spec_head import self_turns

    tok = load(str(tiny_llama), None, "cpu").tokenizer
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} [end]\n{% endfor %}[assistant]"
    eos = tok.convert_tokens_to_ids("[SEP]")
    tok.eos_token = "[SEP]"
    words = tok("how do i bake bread at home", add_special_tokens=False)["input_ids"]
    other = tok("write a poem about the sea tonight", add_special_tokens=False)["input_ids"]
    rows = [words + [eos], words + [eos], other + [eos], other, [tok.convert_tokens_to_ids("a"), eos]]
    model = _Writes(rows)
    state = torch.random.get_rng_state()
    turns = self_turns(model, tok, 2, "cpu", batch=len(rows))
    assert turns == ["how do i bake bread at home", "write a poem about the sea tonight"]
    assert model.calls == 1 and torch.equal(torch.random.get_rng_state(), state)
    tok.chat_template = None
    assert self_turns(model, tok, 2, "cpu") == []


def test_own_requests_without_a_chat_template_are_refused_in_one_line(tiny_llama):
    loaded = load(str(tiny_llama), None, "cpu")
    with pytest.raises(InputError, match="draft_prompts=self: no reply window.*chat template"):
        speculative(loaded, method="draft", draft_layers=1, distill_steps=1, draft_chats=4, draft_prompts="self")


def test_mixed_prompts_put_both_kinds_of_reply_in_every_batch(tiny_llama, monkeypatch):
    """draft_prompts=mixed: half the turns over built-in passages, half the model's own requests, interleaved so
    each batch (and the held-out one) holds both; an own request's window ends in a 224-token reply."""
    from workbench.core.optimizations import spec_head

    loaded = load(str(tiny_llama), None, "cpu")
    ask = "please explain how one bakes a loaf of bread at home with flour water salt and yeast, step by step, " \
          "and what can go wrong along the way"  # a request long enough to leave 32 prompt tokens in the window
    monkeypatch.setattr(spec_head, "self_turns", lambda model, tok, n, device: [f"{ask} ({i})" for i in range(n)])
    seen = spy_on_distill(monkeypatch)
    rep, _ = speculative(loaded, method="draft", draft_layers=1, distill_steps=1, draft_chats=8, draft_batch=2,
                         draft_prompts="mixed")
    data = rep["distill_data"]
    assert data["prompts"] == "mixed" and data["passage_windows"] == 4 and data["own_request_windows"] == 4
    held = seen["batches"][0]["input_ids"]  # the held-out chat batch: one of each kind
    assert held.shape == (2, 256)
    texts = [loaded.tokenizer.decode(row) for row in held]
    assert sum("yeast" in t for t in texts) == 1
