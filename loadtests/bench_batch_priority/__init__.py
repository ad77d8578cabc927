"""Interactive latency while a batch runs: batch requests must yield to interactive ones.

    python -m loadtests.bench_batch_priority            # about 6 minutes on 2 CPU cores
    python -m loadtests.bench_batch_priority --quick    # the wiring: small rounds, a minute or two
    python -m loadtests.bench_batch_priority --busy 4   # batch lines do not yield in the gateway (compare)
    python -m loadtests.bench_batch_priority --gateway-url http://127.0.0.1:8000 --api-key tk-...   # a running Tailor

Without --gateway-url it starts its own Tailor (`python -m gateway.cli serve`, throwaway data
directory, no trainer) with its real child vLLM engine, which Tailor starts with
`--scheduling-policy priority`, and creates a tenant and key through the admin API.

Rounds alternate ABAB: in an A round `clients` closed-loop interactive clients each send
`requests` chat completions back to back, alone; a B round first creates a batch of
`batch_lines` chat requests, waits until its first line is answered (the batch runs at full
speed), counts the lines it answers alone for `alone_s`, then runs the same interactive
clients while it goes on, counts the lines answered meanwhile, and cancels it (waiting until
its lines in flight have finished) before the next round. Every request, interactive or batch,
is a chat completion at temperature 0 with `max_tokens` and `ignore_eos` (a vLLM extension the
gateway passes through), so each generates exactly that many tokens. After one uncounted
warm-up request per client, interactive latencies are pooled per kind of round.

Printed: p50/p95 latency of interactive requests without and with a batch running, the ratio
p95(with)/p95(without) against the 1.2 target, and the batch lines answered per second alone
and beside the interactive clients. The exit code is 0 whatever the verdict: this measures, it
does not test. On a shared machine the figures move with whatever else runs: the load average
before and after is printed, and a warning when the machine was busy.

Modules: `workload` (the settings and the request every client and batch line sends), `batches`
(a batch through the Batch API), `rounds` (A and B rounds), `report`, `cli` (arguments, `main`).
"""
