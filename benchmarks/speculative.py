"""Speculative decoding on real weights: demo:smollm2 as the model, batch 1, greedy.

For each prompt — a code edit and a passage to summarise (output that repeats the input) and an open question
(nothing to look up) — it times, in interleaved rounds through optbench's own ``bench_causal``: plain greedy
decoding, prompt lookup, and a draft made of the model's own blocks distilled on the built-in text (at most
``--distill-seconds``, once, reused for every prompt). Each row: decode ms/token (median over rounds of the
per-round medians), speedup against plain decoding of the same prompt in the same run, tokens per target forward,
acceptance rate, and whether the speculative output equals plain greedy decoding token for token.

Usage: python benchmarks/speculative.py [--device cpu|cuda] [--new-tokens 96] [--rounds 3]
       [--draft-layers 8] [--distill-steps 400] [--distill-seconds 600] [--drafts "vocab=0,k=4;vocab=8192,k=4"]
       [--self-drafts "k=4;k=6"] [--target-dtype model|bf16] [--out benchmarks/results]
Writes speculative_<device>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CODE = '''def summarize(records, key, threshold=0.5):
    total = 0
    count = 0
    kept = []
    for record in records:
        value = record.get(key)
        if value is None:
            continue
        if value < threshold:
            continue
        total += value
        count += 1
        kept.append(record)
    average = total / count if count else 0.0
    return {"average": average, "count": count, "kept": kept}'''

PASSAGE = ("The lighthouse on the northern cape was built in 1874 after three ships ran aground on the reef in a "
           "single winter. Its lamp burned whale oil at first, then kerosene, and from 1931 an electric bulb fed by "
           "a diesel generator. The keeper and his family lived in the cottage beside the tower, rowing to the "
           "village once a week for supplies. In 1968 the light was automated, the last keeper left, and the "
           "cottage became a museum that now opens every summer.")

STUDENT_REPORT = "optbench_draft.json"  # beside a kept student: how it was built and distilled

PROMPTS = {
    "code-edit": ("repeats its input", "Rename the variable `total` to `running_sum` in this Python function. "
                  "Reply with the whole function only.\n\n```python\n" + CODE + "\n```"),
    "summary": ("repeats its input", "Summarise this passage in three sentences, keeping its wording where you "
                "can.\n\n" + PASSAGE),
    "open": ("nothing to look up", "Write a short poem about the sea at night."),
}


def draft_line(rep: dict) -> str:
    head = rep.get("draft_head")
    text = ""
    if head:
        t = head["head_training"]
        text = (f" Draft head (speculative:method=draft-head): trained {t['steps']} steps in {t['seconds']:.0f} s on "
                f"{head['features_tokens']} tokens' features, {head['num_tokens']} drafts per round, head rows "
                f"{head['draft_vocab']}, {head['draft_cost_ratio']:.3f}× the model's bytes; held-out teacher-forced "
                f"agreement per draft {', '.join(f'{a:.2f}' for a in head['held_out_agreement'])}; setup "
                f"{head['setup_seconds']:.0f} s.")
    if "draft_layers" not in rep:
        return ("No draft model in this run." + text) if not head else text.strip()
    students = rep.get("students") or {None: rep}
    parts = []
    for chats, one in students.items():
        if one.get("draft_layers") is None:  # a folder without its build report (--draft-from)
            parts.append(f"{chats}: a student loaded from {one.get('draft')}, how it was built not recorded")
            continue
        d = one.get("distill", {})
        data = one.get("distill_data")
        source = (f"on {data['chat_windows']} of the model's chat replies ({data['generate_seconds']:.0f} s to "
                  f"generate; prompts {data.get('prompts', 'passages')}, {data.get('own_request_windows', 0)} of "
                  f"them to requests it wrote) alternating with built-in text, {data.get('batch', 1)} windows a step"
                  if data else "on the built-in text")
        if one.get("heldout_agreement_after") is not None:
            source += (f"; teacher-forced agreement with the model's next token on held-out replies "
                       f"{one['heldout_agreement_before']:.3f} -> {one['heldout_agreement_after']:.3f}")
        loss = (f", held-out KL {d['heldout_loss_before']:.3f} -> {d['heldout_loss_after']:.3f}"
                if d.get("heldout_loss_after") is not None else "")
        who = "" if chats is None else (chats if str(chats).startswith("from ") else f"chats={chats}") + ": "
        parts.append(f"{who}distilled {d.get('steps_done', d.get('steps'))} "
                     f"steps {source}{loss}, setup {one['setup_seconds']:.0f} s")
    return (f"Draft: {rep.get('draft_layers')} of the model's blocks {rep.get('draft_blocks')}; "
            + "; ".join(parts) + f". Its weights are {rep.get('draft_cost_ratio', 0):.2f}× the model's bytes "
            f"(draft_vocab=N keeps N rows of its head)." + text)


def truth_check(torch, device: str, gen, ids, new: int, ours, rounds: int) -> dict:
    """An independent per-token figure for one generator: whole calls of ``new`` and of 2 tokens timed with CUDA
    events (perf_counter on a CPU), (median T(new) - median T(1)) / (new - 1), interleaved round by round with
    optbench's own stamped figure (``ours()``: its decode ms/token samples); medians. T(1) is the prefill alone (its
    token is the first); a 2-token call would hold one whole speculative round, which can give several tokens, so
    subtracting it (gpu_ladder's T(2), right for one token per step) biases a speculative figure by a round."""

    def whole(n: int) -> float:
        with torch.inference_mode():
            if device != "cuda":
                t0 = time.perf_counter()
                gen.generate(ids, n)
                return (time.perf_counter() - t0) * 1000
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            a.record()
            gen.generate(ids, n)
            b.record()
            torch.cuda.synchronize()
            return a.elapsed_time(b)

    whole(new), whole(1)
    longs, shorts, mine = [], [], []
    for _ in range(rounds):
        longs.append(whole(new))
        shorts.append(whole(1))
        mine += ours()
    independent = (statistics.median(longs) - statistics.median(shorts)) / (new - 1)
    m = statistics.median(mine)
    return {"optbench_decode_ms": m, "independent_decode_ms": independent,
            "difference_percent": (m - independent) / independent * 100, "optbench_samples_ms": mine,
            "long_call_ms": longs, "short_call_ms": shorts}


def same_tokens(got, plain, graph, prompt: int) -> dict:
    """Where an output left plain greedy (the first generated token that differs; in bf16 a near-tie can flip
    between kernels) and whether it is graph-decode's own output token for token (same kernels, same numerics)."""
    import torch

    a, b = got[0, prompt:], plain[0, prompt:]
    n = min(len(a), len(b))
    diff = (a[:n] != b[:n]).nonzero()
    first = int(diff[0]) if len(diff) else (n if len(a) != len(b) else None)
    return {"first_difference": first,
            "identical_to_graph_decode": None if graph is None else bool(torch.equal(got, graph))}


def self_line(variants: dict) -> str:
    """The self drafts' line (speculative:draft=self): their precision and bytes against the model's."""
    reps = [rep for rep, _ in variants.values() if rep.get("draft") == "self"]
    if not reps:
        return ""
    r = reps[0]
    return (f" Self drafts (draft=self): the model's own weights, {r.get('draft_dtype')}; "
            f"{r.get('draft_cost_ratio', 0):.2f}× the model's bytes (the embedding shared), no training.")


def identity_cell(row: dict) -> str:
    if row.get("identical_to_greedy") is None:
        return ""
    if row["identical_to_greedy"] or row.get("first_difference") is None:
        return str(row["identical_to_greedy"])
    same = row.get("identical_to_graph_decode")
    return (f"False from token {row['first_difference']}"
            + ("" if same is None else "; = graph-decode's" if same else "; ≠ graph-decode's"))


def vs_graph(row: dict) -> str:
    return f" ({row['vs_graph_decode']:.2f}× graph-decode)" if "vs_graph_decode" in row else ""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo:smollm2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=2, help="timed generate calls per variant per round")
    ap.add_argument("--draft-layers", type=int, default=8)
    ap.add_argument("--distill-steps", type=int, default=400)
    ap.add_argument("--distill-seconds", type=float, default=600.0)
    ap.add_argument("--draft-chats", default="96",
                    help="comma list: one student per value, distilled on that many of the model's own chat replies "
                         "(speculative:draft_chats; 0: the built-in text alone), each under the same budget")
    ap.add_argument("--draft-prompts", default="passages",
                    help="comma list of speculative:draft_prompts (passages, self, mixed): one student per value and "
                         "--draft-chats value")
    ap.add_argument("--keep-drafts", default=None,
                    help="save each distilled student under this folder (DIR/<chats>[-<prompts>]) for spec_diag.py "
                         "--draft, instead of a temporary folder")
    ap.add_argument("--draft-from", default=None,
                    help="comma list of student folders saved by --keep-drafts (on a GPU, say): drafted with as they "
                         "are, beside any built here (--distill-steps 0 --draft-chats '' builds none)")
    ap.add_argument("--draft-batch", type=int, default=0,
                    help="speculative:draft_batch: chat windows per distillation step (0: auto, 32 on a GPU for "
                         "SmolLM2's vocabulary, 1 on a CPU)")
    ap.add_argument("--pack", action="store_true",
                    help="CPU: the model and every draft on oneDNN-packed Linear weights (onednn-linear), and one "
                         "more row, plain greedy on nn.Linear's own forward, for the ratio to the unpacked model")
    ap.add_argument("--no-eager", action="store_true",
                    help="leave out transformers' assisted loops (prompt lookup and each draft without "
                         "graph-decode); with --graph, every speculative row is then inside graph-decode's loop")
    ap.add_argument("--drafts", default="vocab=0,k=4",
                    help="draft variants over the one distilled student, ';'-separated: vocab=N (draft_vocab, 0 = "
                         "the whole vocabulary), k=N (tokens drafted per round), dtype=D (speculative:draft_dtype, "
                         "e.g. int8), compile=1 (speculative:draft_compile)")
    ap.add_argument("--self-drafts", default="",
                    help="';'-separated k=N[,dtype=D] variants drafted by the model's own weights "
                         "(speculative:draft=self, draft_dtype D, default int8): no student needed")
    ap.add_argument("--target-dtype", default="model", choices=("model", "bf16"),
                    help="bf16: cast the model first (the faster plain recipe on a CPU with native bf16); every "
                         "row, plain included, then runs it")
    ap.add_argument("--graph", action="store_true",
                    help="also graph-decode alone (the best plain recipe on a GPU) and prompt lookup inside "
                         "graph-decode's loop (speculative:method=prompt-lookup + graph-decode)")
    ap.add_argument("--head-seconds", type=float, default=0.0,
                    help="also speculative:method=draft-head, its head trained this long (0: no draft-head rows)")
    ap.add_argument("--head-tokens", type=int, default=32768, help="built-in tokens the head trains on")
    ap.add_argument("--head-k", type=int, default=3, help="drafts per round of the draft head")
    ap.add_argument("--head-lookup", type=int, default=0,
                    help="also the head with prompt lookup (speculative:lookup=N: n-gram matches of N+ tokens draft)")
    ap.add_argument("--graph-params", default="",
                    help="graph-decode's parameters for every graph-decode row, e.g. "
                         "fuse=true,verify_attention=decomposed (default: its defaults)")
    ap.add_argument("--gate-off", action="store_true",
                    help="with --graph: also prompt lookup and each draft in graph-decode's loop with "
                         "speculative:gate=off (every round drafts and verifies), beside the default gate=auto")
    ap.add_argument("--truth", type=int, default=0,
                    help="rounds of the truth check for every graph-decode variant: optbench's per-token figure vs "
                         "whole-call timing (CUDA events on a GPU) of the same generator, (T(n) - T(1)) / (n - 1)")
    ap.add_argument("--prompts", default=",".join(PROMPTS))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--stem", default=None, help="file name stem (default speculative_<device>)")
    args = ap.parse_args()
    graph_params = dict(kv.split("=", 1) for kv in filter(None, args.graph_params.split(",")))

    import torch

    from workbench.core import optimizations, quiet
    from workbench.core.measure.env import environment
    from workbench.core.measure.timing import bench_causal
    from workbench.core.models import load
    from workbench.core.optimizations.context import ApplyContext
    from workbench.core.recipe import BenchSettings

    quiet.quiet_libraries()
    loaded = load(args.model, "causal-lm", args.device)
    model, tok = loaded.model, loaded.tokenizer
    if args.target_dtype == "bf16":
        from workbench.core.optimizations._common import cast

        cast(model, torch.bfloat16)
    if args.pack:
        from workbench.core.optimizations.onednn_linear import pack_linears, unpack_linears

        print(f"onednn-linear: {pack_linears(model)['packed']} Linear layers packed", flush=True)

    def pack_draft(gk: dict) -> None:
        """With --pack: the variant's draft (loaded by reference, its own copy) on packed weights too."""
        handed = gk.get("optbench_speculative") or {}
        draft = handed.get("draft") if handed.get("draft") is not None else handed.get("head")
        if args.pack and draft is not None:
            pack_linears(draft)

    spec = optimizations.get("speculative")
    settings = BenchSettings(batch=1, new_tokens=args.new_tokens, warmup=1, min_iters=args.iters, min_seconds=0.0)

    def make(params: dict):
        ctx = ApplyContext(args.device, "causal-lm", tok, log=lambda t: print("  " + t, flush=True))
        ctx.extra["generate_kwargs"] = {}
        t0 = time.perf_counter()
        rep = spec.apply(model, spec.resolve(params), ctx).report
        rep["setup_seconds"] = time.perf_counter() - t0
        pack_draft(ctx.extra["generate_kwargs"])
        return rep, ctx.extra["generate_kwargs"]

    drafts = list(filter(None, args.drafts.split(";")))
    prompt_kinds = args.draft_prompts.split(",")
    data_choices = [(int(c), kind) for c in filter(None, args.draft_chats.split(",")) for kind in prompt_kinds
                    ] if drafts else []
    # a student per data choice: "2048" or, with several prompt kinds, "2048/mixed"
    chat_counts = [f"{c}/{kind}" if len(prompt_kinds) > 1 else str(c) for c, kind in data_choices]
    draft_report: dict = {}
    student_dirs: dict[str, Path] = {}
    for chats, (count, kind) in zip(chat_counts, data_choices):  # built once, given to its variants by reference
        print(f"building the draft (distilled student of the model's own blocks, {count} chat replies, prompts "
              f"{kind})", flush=True)
        built = make({"method": "draft", "draft_layers": args.draft_layers, "distill_steps": args.distill_steps,
                      "distill_seconds": args.distill_seconds, "draft_chats": count, "draft_batch": args.draft_batch,
                      "draft_prompts": kind})
        one = {k: v for k, v in built[0].items() if k != "stats"}
        draft_report = draft_report or dict(one)
        draft_report.setdefault("students", {})[chats] = one
        print(f"draft ready in {one['setup_seconds']:.0f} s", flush=True)
        import tempfile

        student_dirs[chats] = (Path(args.keep_drafts) / chats.replace("/", "-") if args.keep_drafts
                               else Path(tempfile.mkdtemp(prefix="optbench-draft-")))
        built[1]["optbench_generator"](1, 64).draft.save_pretrained(student_dirs[chats])
        tok.save_pretrained(student_dirs[chats])
        (student_dirs[chats] / STUDENT_REPORT).write_text(json.dumps(one, indent=1, default=str))
    for folder in filter(None, (args.draft_from or "").split(",")):  # students distilled elsewhere (a GPU)
        path = Path(folder)
        label = f"from {path.name}"
        saved = path / STUDENT_REPORT
        one = json.loads(saved.read_text()) if saved.is_file() else {"draft": str(path), "draft_layers": None}
        one["setup_seconds"] = one.get("setup_seconds", 0.0)
        draft_report = draft_report or dict(one)
        draft_report.setdefault("students", {})[label] = one
        chat_counts.append(label)
        student_dirs[label] = path
    variants = {} if args.no_eager else {"prompt-lookup": make({"method": "prompt-lookup"})}
    if args.graph:
        graph = optimizations.get("graph-decode")

        def with_graph(speculative_params: dict | None):
            gk: dict = {}
            rep: dict = {"stats": {}}
            if speculative_params is not None:
                ctx = ApplyContext(args.device, "causal-lm", tok, log=lambda t: print("  " + t, flush=True))
                ctx.extra["generate_kwargs"] = gk
                rep = spec.apply(model, spec.resolve(speculative_params), ctx).report
                pack_draft(gk)
            ctx = ApplyContext(args.device, "causal-lm", tok, log=lambda t: print("  " + t, flush=True))
            ctx.extra["generate_kwargs"] = gk
            rep["graph_decode"] = graph.apply(model, graph.resolve(graph_params), ctx).report
            return rep, gk

        variants["graph-decode"] = with_graph(None)
        variants["prompt-lookup+graph-decode"] = with_graph({"method": "prompt-lookup"})  # gate=auto
        if args.gate_off:
            variants["prompt-lookup+graph-decode,gate=off"] = with_graph({"method": "prompt-lookup", "gate": "off"})
    if args.head_seconds:  # one head, trained once, handed to both loops (eager, and graph-decode's)
        print(f"training the draft head ({args.head_seconds:.0f} s)", flush=True)
        head_params = {"method": "draft-head", "distill_seconds": args.head_seconds, "head_tokens": args.head_tokens,
                       "num_tokens": args.head_k}
        head_rep, head_gk = make(head_params)
        draft_report["draft_head"] = {k: v for k, v in head_rep.items() if k not in ("stats",)}
        variants["draft-head"] = (head_rep, head_gk)
        head = head_gk["optbench_speculative"]["head"]

        def head_variant(lookup: int, graph: bool):
            """The same head in another loop (graph-decode's) or with prompt lookup, its stats counted on its own."""
            import copy

            from workbench.core.optimizations.spec_head import head_greedy_class
            from workbench.core.optimizations.speculative import _Stats

            stats2 = _Stats()
            rep2 = {k: copy.deepcopy(v) for k, v in head_rep.items() if k != "stats"}
            rep2.update({"stats": stats2.live, "lookup": lookup})
            if not graph:
                made: dict = {}

                def factory(batch: int, max_len: int):
                    if "gen" not in made or made["gen"].max_len < max_len + args.head_k:
                        made["gen"] = head_greedy_class()(model, 1, max_len, head, args.head_k, stats=stats2,
                                                          mode="eager", lookup=lookup)
                    return made["gen"]

                return rep2, {"optbench_generator": factory}
            gk2 = {"optbench_speculative": {**head_gk["optbench_speculative"], "stats": stats2, "report": rep2,
                                            "lookup": lookup}}
            ctx = ApplyContext(args.device, "causal-lm", tok, log=lambda t: print("  " + t, flush=True))
            ctx.extra["generate_kwargs"] = gk2
            rep2["graph_decode"] = optimizations.get("graph-decode").apply(
                model, optimizations.get("graph-decode").resolve({}), ctx).report
            return rep2, gk2

        if args.head_lookup:
            variants[f"draft-head+lookup={args.head_lookup}"] = head_variant(args.head_lookup, False)
        if args.graph:
            variants["draft-head+graph-decode"] = head_variant(0, True)
            if args.head_lookup:
                variants[f"draft-head+lookup={args.head_lookup}+graph-decode"] = head_variant(args.head_lookup, True)
    selfs = [("self", d) for d in filter(None, args.self_drafts.split(";"))]
    for chats, spec_text in [(c, d) for c in chat_counts for d in drafts] + selfs:
        kv = dict(part.split("=", 1) for part in spec_text.split(","))
        vocab, k = int(kv.get("vocab", 0)), int(kv.get("k", 4))
        dtype = kv.get("dtype", "int8" if chats == "self" else None)
        compiled = kv.get("compile", "0") not in ("0", "false")
        params = {"method": "draft", "draft": "self" if chats == "self" else str(student_dirs[chats]),
                  "draft_vocab": vocab, "num_tokens": k, **({"draft_dtype": dtype} if dtype else {}),
                  **({"draft_compile": True} if compiled else {})}
        tag = chats if chats.startswith("from ") or chats == "self" else f"chats={chats}"
        name = (f"draft[{f'{tag},' if len(chat_counts) > 1 or chats == 'self' else ''}vocab={vocab or 'all'},k={k}"
                f"{f',{dtype}' if dtype else ''}{',compiled' if compiled else ''}]")
        if not args.no_eager:
            variants[name] = make(params)
        if args.graph:  # the same draft inside graph-decode's loop (spec_draft.py: static caches, captured steps)
            variants[f"{name}+graph-decode"] = with_graph(params)  # gate=auto
            if args.gate_off:
                variants[f"{name}+graph-decode,gate=off"] = with_graph({**params, "gate": "off"})

    env = environment(args.device)
    names = args.prompts.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def write(rows: list[dict], done: bool) -> list[str]:
        """The JSON and the table so far: written after every prompt, so a run cut short keeps what it measured."""
        doc = {"model": args.model, "device": args.device, "environment": env, "new_tokens": args.new_tokens,
               "rounds": args.rounds, "target_dtype": args.target_dtype, "onednn_linear": args.pack,
               "draft": draft_report,
               "variants": {v: {k: val for k, val in rep.items() if k != "stats"}
                            for v, (rep, _) in variants.items()},
               "rows": rows, "complete": done, "prompts": names, "graph_decode_params": graph_params}
        dev = "cpu" if args.device == "cpu" else "cuda"
        stem = args.stem or f"speculative_{dev}"
        (out / f"{stem}.json").write_text(json.dumps(doc, indent=1, default=str))
        lines = [f"# Speculative decoding: {args.model}, batch 1, greedy, {args.new_tokens} new tokens"
                 + ("" if done else f" (partial: {len({r['prompt'] for r in rows})} of {len(names)} prompts)"),
                 "", f"Device: {env.get('device_name')} ({(env.get('cpu_isa') or {}).get('summary', '')}); torch "
                 f"{env.get('torch')}, transformers {env.get('transformers')}. Interleaved rounds: {args.rounds} × "
                 f"{args.iters} timed calls per variant; ms/token = median of per-round medians; speedup vs plain "
                 f"greedy on the same prompt in the same run.", "",
                 draft_line(draft_report) + self_line(variants) + f" Target precision: {args.target_dtype}."
                 + (f" graph-decode rows: {args.graph_params}"
                    + ("; fuse rewrites the model in place (projections fused, attention routed), so the plain "
                       "rows and the greedy reference run on the fused model too." if "fuse" in graph_params
                       else ".") if graph_params else "")
                 + (" Every model (target and drafts) on oneDNN-packed Linear weights (onednn-linear); plain "
                    "(nn.Linear) is the same target on nn.Linear's own forward." if args.pack else ""), "",
                 "| prompt | kind | variant | decode ms/token | speedup | tokens / target forward | acceptance | "
                 "identical to greedy |", "|---|---|---|---|---|---|---|---|"]
        truth: list[str] = []
        for r in rows:
            tpf = r.get("tokens_per_target_forward")
            if r.get("truth_check"):
                t = r["truth_check"]
                truth.append(f"| {r['prompt']} | {r['variant']} | {t['optbench_decode_ms']:.3f} | "
                             f"{t['independent_decode_ms']:.3f} | {t['difference_percent']:+.2f} % |")
            acc = r.get("acceptance_rate")
            lines.append(f"| {r['prompt']} | {r['kind']} | {r['variant']} | {r['decode_ms_per_token']:.1f} | "
                         f"{r['speedup']:.2f}×{vs_graph(r)} | {'' if tpf is None else f'{tpf:.2f}'} | "
                         f"{'' if acc is None else f'{acc:.2f}'} | {identity_cell(r)} |")
        if truth:
            lines += ["", "Truth check: optbench's decode ms/token (stamped at every accepted token) vs an independent "
                      "whole-call figure of the same generator, (T(n) - T(1)) / (n - 1), CUDA events on a GPU; "
                      f"{args.truth} interleaved rounds, medians.", "",
                      "| prompt | variant | optbench ms/token | independent ms/token | difference |",
                      "|---|---|---|---|---|"] + truth
        (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
        return lines

    rows = []
    for name in names:
        kind, text = PROMPTS[name]
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        with torch.inference_mode():
            plain_out = model.generate(input_ids=ids.to(args.device), attention_mask=torch.ones_like(ids).to(
                args.device), max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        per = {"plain": [], **({"plain (nn.Linear)": []} if args.pack else {}), **{v: [] for v in variants}}
        identical, outputs = {}, {}
        for v, (rep, gk) in variants.items():
            gen = gk["optbench_generator"](1, ids.shape[1] + args.new_tokens)
            outputs[v] = got = gen.generate(ids.to(args.device), args.new_tokens).cpu()
            identical[v] = bool(torch.equal(got, plain_out.cpu()))
            rep["stats"].clear()
            rep["stats"].update({"calls": 0, "tokens": 0, "target_forwards": 0, "proposed": 0})
        for r in range(args.rounds):  # interleaved: plain, then each variant, every round
            res = bench_causal(model, tok, settings, args.device, prompt_ids=ids)
            per["plain"].append(res["decode_ms_per_token"]["p50"])
            if args.pack:  # the same model on nn.Linear's own forward, packed again after
                unpack_linears(model)
                res = bench_causal(model, tok, settings, args.device, prompt_ids=ids)
                per["plain (nn.Linear)"].append(res["decode_ms_per_token"]["p50"])
                pack_linears(model)
            for v, (rep, gk) in variants.items():
                res = bench_causal(model, tok, settings, args.device, generate_kwargs=gk, prompt_ids=ids)
                per[v].append(res["decode_ms_per_token"]["p50"])
            print(f"{name} round {r + 1}: " + ", ".join(f"{k} {vals[-1]:.1f}" for k, vals in per.items()),
                  flush=True)
        plain = statistics.median(per["plain"])
        rows.append({"prompt": name, "kind": kind, "variant": "plain" + (" (onednn-linear)" if args.pack else ""),
                     "decode_ms_per_token": plain, "rounds": per["plain"], "speedup": 1.0,
                     "prompt_tokens": int(ids.shape[1])})
        if args.pack:
            ms = statistics.median(per["plain (nn.Linear)"])
            rows.append({"prompt": name, "kind": kind, "variant": "plain (nn.Linear)", "decode_ms_per_token": ms,
                         "rounds": per["plain (nn.Linear)"], "speedup": plain / ms,
                         "prompt_tokens": int(ids.shape[1])})
        for v, (rep, _) in variants.items():
            ms = statistics.median(per[v])
            s = dict(rep["stats"])
            rows.append({"prompt": name, "kind": kind, "variant": v, "decode_ms_per_token": ms, "rounds": per[v],
                         "speedup": plain / ms, "tokens_per_target_forward": s.get("tokens_per_target_forward"),
                         "acceptance_rate": s.get("acceptance_rate"), "identical_to_greedy": identical[v],
                         **same_tokens(outputs[v], plain_out.cpu(), outputs.get("graph-decode"), ids.shape[1]),
                         "stats": s, "prompt_tokens": int(ids.shape[1])})
            if "graph-decode" in per:  # the best plain recipe on a GPU, same prompt, same rounds
                rows[-1]["vs_graph_decode"] = statistics.median(per["graph-decode"]) / ms
        if args.truth:
            truth_settings = BenchSettings(batch=1, new_tokens=args.new_tokens, warmup=0, min_iters=1,
                                           min_seconds=0.0)
            for row in rows:
                if row["prompt"] != name or "graph-decode" not in row["variant"]:
                    continue
                gk = variants[row["variant"]][1]
                gen = gk["optbench_generator"](1, ids.shape[1] + args.new_tokens)
                row["truth_check"] = truth_check(
                    torch, args.device, gen, ids.to(args.device), args.new_tokens,
                    lambda gk=gk: bench_causal(model, tok, truth_settings, args.device, generate_kwargs=gk,
                                               prompt_ids=ids)["decode_ms_per_token"]["samples"], args.truth)
                print(f"{name} truth {row['variant']}: {row['truth_check']['difference_percent']:+.2f} %", flush=True)
        write(rows, False)
        print(f"{name}: identical to greedy: {identical}", flush=True)
    print("\n".join(write(rows, True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
