#!/usr/bin/env bash
# Calibrate the engine model on the real vLLM (CUDA) of a lent GPU machine: start vLLM,
# drive bursts of streaming requests at it (kservebench loadgen), keep the records, the
# sampled running/waiting gauges and a /metrics dump, then fit and check the model
# (kservebench.llm.calibrate_cli). See README.md next to this file for the knobs.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
work="${WORK:-/tmp/kservebench-gpu}"
out="${OUT:-$repo/results/gpu-calibration}"
model="${MODEL:-}"   # a Hugging Face model folder; empty: the generated tiny Llama
variant="${VARIANT:-$([[ -n "$model" ]] && echo llama-3.1-8b-h200 || echo tiny-llama-cpu)}"
port="${PORT:-8000}"
max_num_seqs="${MAX_NUM_SEQS:-64}"
max_num_batched_tokens="${MAX_NUM_BATCHED_TOKENS:-8192}"
max_model_len="${MAX_MODEL_LEN:-2048}"  # the tiny Llama's positions; 8B: up to 131072
rate="${RATE:-16}"            # requests/s while on
duration="${DURATION:-120s}"  # on 10 s, off 5 s: bursts, batching, queueing, idle gaps
output_tokens="${OUTPUT_TOKENS:-256}"
url="http://127.0.0.1:$port"
mkdir -p "$work" "$out/run"

venv() {  # venv DIR PACKAGE...: a virtualenv with the packages (kept between runs)
  local dir="$1"
  shift
  [[ -x "$dir/bin/python" ]] || python3 -m venv "$dir"
  "$dir/bin/pip" install -q "$@"
}
venv "$work/vllm" vllm  # PyPI's CUDA build; its pins fight kserve's, hence two venvs
venv "$work/kb" -e "$repo"
kb="$work/kb/bin/kservebench"

if [[ -z "$model" ]]; then
  "$kb" train --out "$work/trained"
  model="$work/trained/tiny-llama"
fi

"$work/vllm/bin/python" -m vllm.entrypoints.openai.api_server --model "$model" \
  --served-model-name bench --host 127.0.0.1 --port "$port" \
  --max-num-seqs "$max_num_seqs" --max-num-batched-tokens "$max_num_batched_tokens" \
  --max-model-len "$max_model_len" --no-enable-prefix-caching >"$out/vllm.log" 2>&1 &
vllm_pid=$!
sampler_pid=""
cleanup() {
  if [[ -n "$sampler_pid" ]]; then kill "$sampler_pid" 2>/dev/null || true; fi
  kill "$vllm_pid" 2>/dev/null || true
  wait "$vllm_pid" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 600); do
  curl -sf "$url/health" >/dev/null && break
  kill -0 "$vllm_pid" 2>/dev/null || { tail -n 30 "$out/vllm.log"; exit 1; }
  sleep 1
done

# prompts of random words (distinct heads, so no prefix is shared), fixed output length;
# at most 4 tokens a word, so that prompt + output fits max_model_len with any tokenizer
"$work/kb/bin/python" - "$work/dataset.jsonl" "$output_tokens" "$max_model_len" <<'EOF'
import json, random, sys
path, output, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(0)
words = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega".split()
with open(path, "w") as f:
    for i in range(20000):
        n = min(int(rng.lognormvariate(4.5, 0.7)), (limit - output) // 4 - 2)
        prompt = f"{i} " + " ".join(rng.choice(words) for _ in range(n))
        f.write(json.dumps({"prompt": prompt, "max_tokens": output}) + "\n")
EOF

sample_gauges() {  # t_s, rtt_s, running, waiting every 0.25 s
  echo "t_s,rtt_s,running,waiting" >"$out/run/gauges.csv"
  while :; do
    local a b text
    a=$(date +%s.%N)
    text=$(curl -sf "$url/metrics" || true)
    b=$(date +%s.%N)
    awk -v a="$a" -v b="$b" '
      /^vllm:num_requests_running[{ ]/ { r += $NF }
      /^vllm:num_requests_waiting[{ ]/ { w += $NF }
      END { printf "%.6f,%.6f,%d,%d\n", (a + b) / 2, b - a, r, w }' <<<"$text" \
      >>"$out/run/gauges.csv"
    sleep 0.25
  done
}
sample_gauges &
sampler_pid=$!

curl -sf "$url/metrics" >"$out/run/metrics-before.txt"
"$kb" loadgen --url "$url" --model bench --protocol openai --openai-prefix "" \
  --dataset-file "$work/dataset.jsonl" --pattern on-off --rate "$rate" \
  --set on=10s --set off=5s --duration "$duration" --arrival poisson --out "$out/run"
kill "$sampler_pid"
sampler_pid=""
curl -sf "$url/metrics" >"$out/run/metrics.txt"

"$work/kb/bin/python" -m kservebench.llm.calibrate_cli "$out/run" --variant "$variant" \
  --max-num-seqs "$max_num_seqs" --max-num-batched-tokens "$max_num_batched_tokens" \
  --max-model-len "$max_model_len" --out "$out/calibration.json" | tee "$out/calibration.txt"
