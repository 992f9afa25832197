"""Build a model folder of a real model's shape, as a user's downloaded folder would be: bf16 safetensors shards
written by ``save_pretrained``, its config, and the SmolLM2 tokenizer files beside them (``tokenizer_smollm2/``,
vocab 49152: smaller than these models' vocabularies, which is fine for speed and memory figures).

Random-init weights (speed and memory do not depend on their values), made directly on the target device in bf16:
the modules are built on the meta device, materialized empty on the device and filled with a fast normal init
(std 0.02, norms 1, biases 0), so an 8B model takes seconds, not minutes of CPU init.

Usage: python benchmarks/build_model.py llama-8b ./llama-8b [--device cuda]
       python benchmarks/build_model.py tiny-llama /tmp/tiny --device cpu
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

TOKENIZER_DIR = Path(__file__).resolve().parent / "tokenizer_smollm2"

CONFIGS = {
    # meta-llama/Llama-3.1-8B's shape (8.03 B parameters, untied head)
    "llama-8b": ("llama", dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                               num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False,
                               rope_theta=500000.0, max_position_embeddings=8192, rms_norm_eps=1e-5)),
    # meta-llama/Llama-3.1-70B's shape (70.6 B parameters, untied head; 64 heads / 8 KV heads: tp 2, 4 or 8)
    "llama-70b": ("llama", dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False,
                                rope_theta=500000.0, max_position_embeddings=8192, rms_norm_eps=1e-5)),
    # Qwen/Qwen2.5-7B's shape (7.6 B parameters, attention bias on q/k/v, untied head)
    "qwen-7b": ("qwen2", dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                              num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False,
                              rope_theta=1000000.0, max_position_embeddings=8192, rms_norm_eps=1e-6)),
    # CPU tests and dry runs: the Llama-8B layout (untied, GQA) at a toy size
    "tiny-llama": ("llama", dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                                 rope_theta=500000.0, max_position_embeddings=1024)),
}


def make_config(name: str):
    from transformers import LlamaConfig, Qwen2Config

    family, kw = CONFIGS[name]
    cls = LlamaConfig if family == "llama" else Qwen2Config
    cfg = cls(**kw)
    cfg.architectures = ["LlamaForCausalLM" if family == "llama" else "Qwen2ForCausalLM"]
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = 1, 2, 2  # the SmolLM2 tokenizer's ids
    return cfg


def build(name: str, device: str = "cuda", seed: int = 0):
    """The model in bf16 on ``device`` with random weights."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = make_config(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.fill_(1.0)
            elif pname.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=gen)
    # buffers (rotary inv_freq) are left uninitialized by to_empty: rebuild the modules that own them (tiny, on CPU)
    owners = {mname.rpartition(".")[0] for mname, _ in model.named_buffers()}
    for oname in owners:
        owner = model.get_submodule(oname)
        fresh = type(owner)(config=owner.config).to(device)
        parent, _, child = oname.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, fresh)
    return model.eval()


def write_tokenizer(out: Path) -> None:
    for f in TOKENIZER_DIR.iterdir():
        if f.is_file():
            shutil.copy2(f, out / f.name)
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(out)
    except Exception:  # an older transformers that does not know TokenizersBackend: the same files, fast class
        cfg_path = out / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        cfg_path.write_text(json.dumps(cfg, indent=1))
        AutoTokenizer.from_pretrained(out)


def build_folder(name: str, out: str | Path, device: str = "cuda", max_shard_size: str = "5GB") -> dict:
    import torch

    out = Path(out)
    t0 = time.perf_counter()
    model = build(name, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t_build = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    t1 = time.perf_counter()
    model.save_pretrained(out, safe_serialization=True, max_shard_size=max_shard_size)
    write_tokenizer(out)
    t_save = time.perf_counter() - t1
    params = sum(p.numel() for p in model.parameters())
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    files = sorted(p.name for p in out.glob("*.safetensors"))
    size = sum((out / f).stat().st_size for f in files)
    return {"config": name, "path": str(out), "parameters": params, "safetensors_bytes": size, "shards": len(files),
            "build_seconds": t_build, "save_seconds": t_save}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", choices=sorted(CONFIGS))
    ap.add_argument("out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--max-shard-size", default="5GB")
    args = ap.parse_args()
    print(json.dumps(build_folder(args.config, args.out, args.device, args.max_shard_size)), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    raise SystemExit(main())
