"""Gateway overhead benchmark: Tailor against the same vLLM engine called directly.

    python -m loadtests.bench_gateway             # starts its own Tailor; 16 streams, 6 rounds each
    python -m loadtests.bench_gateway --quick     # smoke run: 4 streams, 2 rounds of 8, 16 tokens
    python -m loadtests.bench_gateway --markdown --json bench.json
    python -m loadtests.bench_gateway --gateway-url http://127.0.0.1:8000 --api-key sk-... \\
        --engine-url http://127.0.0.1:8100 --engine-key ... --model SmolLM2-135M-Instruct   # a running Tailor

Without --gateway-url it starts vLLM the way `tailor serve` starts its child engine (same command
line and environment) on a free port with a random key, then Tailor (`python -m gateway.cli
serve`, throwaway data directory) with that engine as an operator-run one (TAILOR_ENGINE_URLS,
TAILOR_ENGINE_API_KEY), creates a tenant and key through the admin API, and benchmarks the
gateway against that engine called directly with its key, so both paths share one engine. (A
child engine started by the gateway itself takes only the gateway's own per-process key.)
The --engine-key of an engine run by hand defaults to TAILOR_ENGINE_API_KEY from the environment.

Every request is a chat completion with temperature 0, `max_tokens` N and `ignore_eos` (a vLLM
extension the gateway passes through), so each one generates exactly N tokens and both paths
do identical engine work. A closed loop of `concurrency` workers sends a round's requests back
to back. After one uncounted warm-up round per target, rounds alternate ABBA (direct, gateway,
gateway, direct, ...) so drift (thermal, other tenants of the machine, cache state) falls on
both targets alike. The ratios gateway/direct are printed against the overhead targets:
throughput >= 0.98 and p50 latency <= 1.02. The exit code is 0 whatever the verdict: this
measures, it does not test.

Modules: `rounds` (closed-loop rounds in ABBA order), `report` (summaries, ratios, the table),
`cli` (arguments, the throwaway Tailor or a running one, the access check, `main`).
"""
