"""ONNX Runtime and OpenVINO as runtime-stage optimizations: a tiny BERT through each of onnx, onnx-int8, openvino
and openvino-int8 via the pipeline (run, accuracy delta, export folder laid out for sentence-transformers/optimum,
reloaded and matching), a classifier through one, the refusals (causal LM, torch-quantized model, a second
runtime), the parameter checks and the CPU-dependent choices with faked feature lists. No speed assertions."""

import json

import numpy as np
import pytest

import onnxruntime  # noqa: F401  (pinned dependencies: a broken install must fail, not skip)
import openvino  # noqa: F401
import torch

from tests.conftest import fast_recipe
from workbench.core import export, optimizations, pipeline
from workbench.core.errors import InputError
from workbench.core.models import load
from workbench.core.optimizations import _cpu_runtimes
from workbench.core.optimizations.context import ApplyContext
from workbench.core.recipe import OptStep, Recipe, ModelSpec


def run(path, opts, tmp_path):
    r = fast_recipe(str(path), opts)
    return pipeline.run(r.validate(), lambda *a, **k: None, artifact_dir=str(tmp_path / "art"))


def fixed(tokenizer, batch=3, seq=20):
    from workbench.core.measure.timing import fixed_input_ids

    ids = fixed_input_ids(tokenizer, batch, seq)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0  # padding must be honoured by the exported graph
    return {"input_ids": ids, "attention_mask": mask}


def torch_reference(path, inputs):
    loaded = load(str(path), None, "cpu")
    with torch.inference_mode():
        out = loaded.model(**inputs)
    return out.last_hidden_state if loaded.task == "encoder" else out.logits


@pytest.mark.parametrize("name,params,min_cos,layout", [
    ("onnx", {}, 0.9999, ["onnx/model.onnx"]),
    ("onnx-int8", {}, 0.95, ["onnx/model.onnx"]),
    ("openvino", {}, 0.9999, ["openvino/openvino_model.xml", "openvino/openvino_model.bin"]),
    ("openvino-int8", {"subset_size": 8, "calib_seq_len": 32}, 0.9, ["openvino/openvino_model.xml",
                                                                     "openvino/openvino_model.bin"]),
])
def test_tiny_bert_through_each_runtime(tiny_bert, tmp_path, name, params, min_cos, layout):
    report = run(tiny_bert, [(name, params)], tmp_path)
    rep = report["optimization_reports"][0]
    assert rep["name"] == name and rep["exportable"] == "custom" and "_model" not in rep
    assert rep["threads"] == torch.get_num_threads()
    cos = report["accuracy"]["cosine_to_baseline"]
    assert min_cos <= cos["value"] <= 1.0 + 1e-6 and cos["baseline"] == 1.0
    assert report["optimized"]["latency_ms"]["count"] >= 2 and report["speedup"] > 0
    size = report["optimized"]["model_size_mb"]
    files = sum(rep["files"].values()) / 1e6
    assert size == pytest.approx(files, rel=0.01)  # the size reported is the runtime files' size
    if name.endswith("int8"):
        # tiny BERT's weights are mostly its (unquantized) embedding table: smaller, not 4x smaller
        assert report["optimized"]["dtype"] == "int8" and report["size_ratio"] < 1.0
    else:
        assert report["optimized"]["dtype"] == "float32"
    # the export folder: what sentence-transformers / optimum load, plus optbench's manifest, verified on write
    art = tmp_path / "art"
    ex = report["export"]
    assert ex["verified"] and ex["format"] == rep["export_format"]
    for f in layout + ["config.json", "tokenizer.json", "optbench.json"]:
        assert (art / f).is_file(), f
    assert json.loads((art / "optbench.json").read_text())["format"] == rep["export_format"]
    model, tok, manifest = export.load_artifact(art)
    inputs = fixed(tok)
    with torch.inference_mode():
        got = model(**inputs).last_hidden_state
    assert got.shape == (3, 20, 64) and torch.isfinite(got).all()
    ref = torch_reference(tiny_bert, inputs)
    row_cos = torch.nn.functional.cosine_similarity(got[:, 0], ref[:, 0], dim=-1)
    assert float(row_cos.min()) >= min_cos - 0.05  # the padded row too
    assert export.verify(art)["verified"]


def test_onnx_export_loads_in_onnxruntime_without_optbench(tiny_bert, tmp_path):
    """The file alone, the way optimum / sentence-transformers open it: named inputs, dynamic batch and sequence."""
    report = run(tiny_bert, [("onnx", {})], tmp_path)
    sess = onnxruntime.InferenceSession(str(tmp_path / "art" / "onnx" / "model.onnx"),
                                        providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert sess.get_outputs()[0].name == "last_hidden_state"
    loaded = load(str(tiny_bert), None, "cpu")
    inputs = fixed(loaded.tokenizer, batch=5, seq=33)
    feed = {k: v.numpy() for k, v in inputs.items()}
    feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
    got = torch.from_numpy(sess.run(None, feed)[0])
    with torch.inference_mode():
        ref = loaded.model(**inputs).last_hidden_state
    assert float((got - ref).abs().max()) < 1e-3 * float(ref.abs().max())
    assert report["optimization_reports"][0]["exporter"] in ("torchscript", "dynamo")


def test_openvino_export_reads_back_with_openvino(tiny_bert, tmp_path):
    run(tiny_bert, [("openvino", {"hint": "THROUGHPUT", "threads": 1})], tmp_path)
    core = openvino.Core()
    m = core.read_model(str(tmp_path / "art" / "openvino" / "openvino_model.xml"))
    assert sorted(n for p in m.inputs for n in p.get_names()) == ["attention_mask", "input_ids", "token_type_ids"]
    assert "last_hidden_state" in m.outputs[0].get_names()
    settings = json.loads((tmp_path / "art" / "optbench_runtime.json").read_text())
    assert settings["hint"] == "THROUGHPUT" and settings["threads"] == 1


def test_classifier_through_onnx_int8_and_openvino(tiny_bert_cls, tmp_path):
    for name in ("onnx-int8", "openvino"):
        report = run(tiny_bert_cls, [(name, {})], tmp_path / name)
        acc = report["accuracy"]
        assert acc["agreement"]["value"] >= 0.5 and abs(acc["kl_divergence"]["value"]) < 0.5
        assert report["export"]["verified"]
        model, tok, _ = export.load_artifact(tmp_path / name / "art")
        logits = model(**fixed(tok)).logits
        assert logits.shape == (3, 3) and torch.isfinite(logits).all()


def test_runtime_after_structured_pruning_exports_the_pruned_graph(tiny_bert, tmp_path):
    report = run(tiny_bert, [("prune-ffn", {"fraction": 0.5}), ("onnx", {})], tmp_path)
    assert report["export"]["verified"] and report["export"]["format"] == "optbench-onnx"
    assert report["accuracy"]["cosine_to_baseline"]["value"] < 1.0


def test_causal_lm_is_refused_before_any_work(tiny_llama):
    loaded = load(str(tiny_llama), None, "cpu")
    ctx = ApplyContext("cpu", loaded.task, loaded.tokenizer)
    for name in ("onnx", "onnx-int8", "openvino", "openvino-int8"):
        spec = optimizations.get(name)
        with pytest.raises(InputError, match=rf"^{name}: .*causal LMs need a KV-cache export"):
            _cpu_runtimes.refuse(loaded.model, ctx, name)
        # and the recipe validator says so first, naming the input
        with pytest.raises(InputError, match=rf"^{name}: does not apply to causal-lm"):
            Recipe(ModelSpec("x"), [OptStep(name, {})]).validate(task="causal-lm", device="cpu")
        assert "causal-lm" not in spec.tasks


def test_cli_refuses_causal_lm_with_one_line(tiny_llama, workdir):
    from tests.test_cli import cli

    proc = cli("run", "--model", str(tiny_llama), "--opt", "onnx", "--no-artifact", cwd=workdir)
    assert proc.returncode == 2
    assert "--opt onnx" in proc.stderr and "causal-lm" in proc.stderr


def test_refuses_torch_quantized_model_and_a_second_runtime(tiny_bert):
    loaded = load(str(tiny_bert), None, "cpu")
    ctx = ApplyContext("cpu", loaded.task, loaded.tokenizer)
    half = loaded.model.to(torch.bfloat16)
    with pytest.raises(InputError, match="expects the float32 torch model"):
        _cpu_runtimes.refuse(half, ctx, "onnx")
    with pytest.raises(InputError, match="cannot be combined with int8-dynamic"):
        Recipe(ModelSpec("x"), [OptStep("int8-dynamic", {}), OptStep("onnx", {})]).validate("encoder", "cpu")
    with pytest.raises(InputError, match="cannot be combined with onnx"):
        Recipe(ModelSpec("x"), [OptStep("onnx", {}), OptStep("openvino", {})]).validate("encoder", "cpu")
    with pytest.raises(InputError, match="does not run on cuda"):
        Recipe(ModelSpec("x"), [OptStep("openvino", {})]).validate("encoder", "cuda")


@pytest.mark.parametrize("name,params,match", [
    ("onnx", {"level": "O9"}, "level='O9' is not allowed"),
    ("onnx", {"threads": -1}, "out of range"),
    ("onnx", {"exporter": "jit"}, "expected one of torchscript, dynamo"),
    ("onnx-int8", {"weight_type": "int4"}, "expected one of auto, qint8, quint8"),
    ("onnx-int8", {"per_channel": "maybe"}, "expected true or false"),
    ("openvino", {"precision": "fp16"}, "expected one of f32, bf16, auto"),
    ("openvino", {"hint": "fast"}, "expected one of LATENCY, THROUGHPUT"),
    ("openvino-int8", {"subset_size": 0}, "out of range"),
    ("openvino-int8", {"bogus": 1}, "unknown parameter 'bogus'"),
])
def test_parameter_validation(name, params, match):
    with pytest.raises(InputError, match=match):
        optimizations.get(name).resolve(params)


def test_unavailable_provider_is_an_input_error(tiny_bert):
    loaded = load(str(tiny_bert), None, "cpu")
    ctx = ApplyContext("cpu", loaded.task, loaded.tokenizer)
    spec = optimizations.get("onnx")
    with pytest.raises(InputError, match="NoSuchExecutionProvider not available"):
        spec.apply(loaded.model, spec.resolve({"providers": "NoSuchExecutionProvider"}), ctx)


def test_kernel_choices_follow_the_cpu(monkeypatch):
    p = optimizations.get("onnx-int8").resolve({})
    vnni = {"avx2": True, "avx512": True, "vnni": True, "bf16": True}
    avx512 = {"avx2": True, "avx512": True, "vnni": False, "bf16": False}
    avx2 = {"avx2": True, "avx512": False, "vnni": False, "bf16": False}
    assert _cpu_runtimes._onnx_weight_choice(p, vnni) == ("qint8", False, "avx512_vnni")
    assert _cpu_runtimes._onnx_weight_choice(p, avx512) == ("qint8", True, "avx512")
    assert _cpu_runtimes._onnx_weight_choice(p, avx2) == ("quint8", False, "avx2")
    forced = optimizations.get("onnx-int8").resolve({"weight_type": "qint8", "reduce_range": "false"})
    assert _cpu_runtimes._onnx_weight_choice(forced, avx2) == ("qint8", False, "avx2")
    ov = optimizations.get("openvino")
    assert _cpu_runtimes._ov_precision(ov.resolve({"precision": "auto"}), vnni, "openvino") == "bf16"
    assert _cpu_runtimes._ov_precision(ov.resolve({"precision": "auto"}), avx2, "openvino") == "f32"
    assert _cpu_runtimes._ov_precision(ov.resolve({}), vnni, "openvino") == "f32"  # the default keeps accuracy
    with pytest.raises(InputError, match="precision=bf16 needs AVX512-BF16 or AMX"):
        _cpu_runtimes._ov_precision(ov.resolve({"precision": "bf16"}), avx2, "openvino")


def test_runtimes_are_in_the_tune_space_for_encoders_on_cpu_only():
    from workbench.core.tune import build_space

    labels = {c.label.split(":")[0] for c in build_space("encoder", "cpu", pairs=False, triples=False).candidates}
    assert {"onnx", "onnx-int8", "openvino", "openvino-int8"} <= labels
    causal = build_space("causal-lm", "cpu", pairs=False, triples=False)
    assert not {c.label.split(":")[0] for c in causal.candidates} & {"onnx", "openvino"}
    assert any(s["label"] == "onnx" and "does not apply" in s["reason"] for s in causal.skipped)


def test_tune_runs_a_runtime_trial_in_its_worker(tiny_bert):
    from workbench.core import tune

    cfg = tune.TuneConfig(recipe=fast_recipe(str(tiny_bert)), objective="size",
                          accuracy=tune.parse_accuracy_budget("50%"), budget_s=120, opts=["onnx-int8"],
                          contention_limit=1.0, max_trials=1)
    rep = tune.Tuner(cfg).run()
    t = rep["trials"][0]
    assert t["label"].startswith("onnx-int8") and t["status"] == "finished" and t["ran"], t
    assert "cosine_to_baseline" in t["accuracy"]


def test_recommend_proposes_a_runtime_for_encoders_where_installed(tiny_bert, tiny_llama):
    from workbench.core.recommend import Constraints, cpu_runtimes_installed, hardware, model_facts, propose

    assert set(cpu_runtimes_installed()) == {"onnx", "onnx-int8", "openvino", "openvino-int8"}
    base = hardware("cpu", measure=False)
    bert, llama = model_facts(str(tiny_bert)), model_facts(str(tiny_llama))
    every = {**base, "cpu_runtimes": cpu_runtimes_installed(), "bf16_native": True, "int8_vnni": True}

    def steps(facts, hw, drop):
        out = propose(facts, hw, Constraints(max_drop=drop))
        assert all(s["reason"] for s in out)
        return [(s["name"], s["params"]) for s in out]

    assert steps(bert, every, 1.0) == [("openvino-int8", {"precision": "auto"})]
    assert steps(bert, {**every, "bf16_native": False}, 1.0) == [("openvino-int8", {})]
    assert steps(bert, every, 0.1) == [("openvino", {"precision": "auto"})]
    assert steps(bert, {**every, "bf16_native": False}, 0.1) == [("openvino", {"precision": "f32"})]
    assert steps(bert, {**every, "cpu_runtimes": ["onnx", "onnx-int8"]}, 1.0) == [("onnx-int8", {})]
    assert steps(llama, every, 2.0)[0][0] not in ("onnx", "onnx-int8", "openvino", "openvino-int8")
    assert steps(bert, {**every, "cpu_runtimes": []}, 1.0) == steps(bert, {**base, "bf16_native": True}, 1.0)


def test_openvino_precision_auto_follows_the_cpu_and_exports(tiny_bert, tmp_path):
    """bf16 where the CPU (under the ISA caps) has AVX512-BF16/AMX, f32 elsewhere; either way the export verifies
    with the bound of the precision it ran in."""
    report = run(tiny_bert, [("openvino", {"precision": "auto"})], tmp_path)
    rep = report["optimization_reports"][0]
    bf16 = _cpu_runtimes.cpu_features()["bf16"]
    assert rep["precision"] == ("bf16" if bf16 else "f32")
    assert report["optimized"]["dtype"] == ("bfloat16" if bf16 else "float32")
    assert report["export"]["verified"] and report["export"]["tolerance"] == (1e-2 if bf16 else 1e-4)
    assert report["accuracy"]["cosine_to_baseline"]["value"] > 0.99
