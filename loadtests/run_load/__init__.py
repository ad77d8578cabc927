"""Realistic load on Tailor with locust, in one bounded headless command, with a summary.

    python -m loadtests.run_load                                   # throwaway local Tailor, 8 users, 60 s
    python -m loadtests.run_load --users 4 --run-time 30s --promote-during-load
    python -m loadtests.run_load --url http://127.0.0.1:8000 --admin-key adm-...   # a running Tailor
    python -m loadtests.run_load --run-time 2m -- --stream-share 0.9 --zipf-s 1.5  # after --: to locust

Steps:

1. builds small random PEFT LoRA adapters for the base model (rank 4 or 8 on a few attention
   or MLP projections, `init_lora_weights=False` so every one differs), cached under
   <out>/adapters (pass the same --out, or --adapter-cache, to reuse them);
2. without --url starts a throwaway Tailor (`loadtests.local_server`), stopped at the end;
3. creates --tenants tenants with one key each through the admin API and registers
   --adapters-per-tenant adapters per tenant by path (`POST /admin/tenants/{t}/adapters/register`;
   the gateway reads the directory, so with --url it must run on this host); writes
   <out>/tenants.json for the locustfile: each tenant's models in popularity order (first
   adapter, the base model, then the long tail);
4. warms every (tenant, model) pair with one 1-token request (--no-warmup to skip), so the
   first adapter loads and the engine's warm-up are not in the figures;
5. runs `python -m locust -f loadtests/locustfile.py --headless ... --csv <out>/locust` as a
   subprocess for --run-time; with --promote-during-load a thread meanwhile flips one
   tenant's hottest adapter between two versions (`/activate` and `/rollback`);
6. writes <out>/summary.md (and summary.json) and prints it: request and token throughput,
   latency percentiles for streamed and plain chat, TTFT and TPOT, error rate, cost per 1K
   requests from the metering endpoint (`GET /admin/usage`, read before and after the run and
   subtracted; n/a where the gateway has no such route), and the promotion switches.

Exit status 1 when the error rate exceeds --max-error-rate (or a setup step fails), else 0.
Traffic goes only to the local Tailor on 127.0.0.1 or to the --url given.

Modules: `loadtests.lora_adapters` (step 1), `tenants` (3, 4), `locust_process` (5), `promoter`,
`metering`, `results` and `report` (6), `cli` (the steps in order, `main`).
"""
