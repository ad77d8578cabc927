"""Adapter churn benchmark: traffic spread over many adapters against traffic on one.

    python -m loadtests.bench_churn                       # 12 adapters, 4 resident, 8 streams
    python -m loadtests.bench_churn --max-resident 12     # the whole working set resident
    python -m loadtests.bench_churn --adapters 12 --max-resident 4 --max-loras 4 \\
        --concurrency 8 --requests 48 --max-tokens 32 --markdown

Starts one throwaway Tailor (`loadtests.local_server`, trainer off) with
TAILOR_MAX_RESIDENT_ADAPTERS = --max-resident and TAILOR_ENGINE_MAX_LORAS = --max-loras (vLLM's
--max-cpu-loras is then max of the two), builds --adapters small random PEFT LoRA adapters
(rank 8 on q/k/v/o, with `loadtests.lora_adapters`) and registers them for one tenant. Two workloads
send the same number of streamed chat requests (temperature 0, `ignore_eos`, exactly
--max-tokens completion tokens each) from a closed loop of --concurrency workers:

* one adapter: every request to adapter 0 (stays resident: no loads after warm-up);
* churn: each request to an adapter drawn uniformly from all N (seeded), so with N above
  --max-resident most requests find their adapter unloaded and the gateway loads it, evicting
  the least recently used one.

After an uncounted warm-up (every adapter touched once, then one round of each workload),
rounds alternate ABBA (one, churn, churn, one, ...) so drift falls on both alike. Per workload:
completion tokens/s over the summed round wall time, p50/p95 latency, p50 TTFT, and from
`GET /admin/engines` the adapter loads and evictions its rounds caused (before/after deltas),
plus the mean load time from the gateway's `tailor_adapter_load_duration_seconds` histogram
(`GET /metrics`). Prints a table with the ratios churn/one, the settings, and a note on what
keeps churn close to one adapter, derived from these numbers. Measures; always exits 0 unless
setup fails.

Modules: `rounds` (the gateway's counters, the two workloads' rounds), `report` (summaries,
the table, what keeps churn close), `cli` (arguments, adapters, the throwaway Tailor, `main`).
"""
