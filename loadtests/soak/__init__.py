"""Soak test: sustained mixed traffic for a bounded time, with memory and file descriptors watched.

    python -m loadtests.soak                                  # 10 min, 4 streams, a sample every 10 s
    python -m loadtests.soak --minutes 4 --sample-s 10 --csv soak.csv
    python -m loadtests.soak --url http://127.0.0.1:8000 --admin-key adm-... [--pid PID]

Without --url it starts a throwaway Tailor (`loadtests.local_server`, trainer worker on, as users
run it). With --url it uses a running one on this machine: the gateway's pid is the process
listening on the URL's port (or --pid), and the adapters are registered by path, so the gateway
must be able to read this machine's files. Either way it builds --adapters small random PEFT LoRA
adapters (`loadtests.lora_adapters`), registers them for a fresh tenant, touches every model once, and
then --concurrency workers send requests back to back for --minutes:

* chat completions and text completions, half of them streamed, on the base model and each
  adapter alike (max_tokens 16);
* after a quarter of the answers, a feedback post rating it (`x-tailor-interaction-id`);
* 1 request in 20 a deliberate error: an unknown model (404), an invalid body (400: bad JSON or
  a wrong type), an unknown API key (401). These count as expected errors; any other status is a
  failure.

Every --sample-s seconds it reads /proc for the gateway and each process below it (the vLLM
engine and its engine core, the trainer worker, ...): RSS, open file descriptors, threads, along
with the requests done and failed so far. The first half of the run is warm-up (allocator arenas,
caches, connection pools fill); the verdict looks at the second half:

* file descriptors at the end within +-5 of their value at the first sample after warm-up;
* the least-squares RSS slope under 50 MiB/h for Python processes (gateway, trainer) and
  100 MiB/h for the engine's, unless the fitted growth over the window stays under the noise
  floor (4 MiB; 16 MiB for the engine). Why these numbers: a leak worth finding grows without
  bound, and 50 MiB/h is ~1.2 GiB a day, which would take a ~200 MiB gateway down within days; at
  this soak's rate of a few requests per second it still bounds a per-request leak to a few KiB,
  far more than a finished request may keep (its interaction row goes to the database). The
  engine's heap is GiBs (weights, a fixed KV cache) and moves with the batch shapes it meets, so
  it gets twice the room. The floor is there because a short window turns allocator wobble into a
  steep slope: 2 MiB over the 2-minute second half of a 4-minute run reads as 60 MiB/h;
* no process restarted, vanished or appeared after warm-up, and no request failed.

Prints a markdown table (per process: RSS start / end / max, slope, FDs, threads) and the
verdict, writes every sample to --csv, and exits 1 when the verdict fails (2 when setup fails).

Modules: `loadtests.procfs` (reading /proc), `samples` (samples, their summary per process and
the verdict), `traffic` (the request mix), `report` (the table and the CSV), `cli` (the run, `main`).
"""
