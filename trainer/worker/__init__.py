"""The trainer worker: claims queued fine-tuning jobs and takes each from data to a served version.

Run one per training host, from the repository root:

    python -m trainer.worker            # or `tailor-trainer`; uses the TAILOR_* settings, like the gateway
    python -m trainer.worker --job ID   # run one queued job now and exit

Several workers share one PostgreSQL database and object stores (adapter store, blob
store) and claim jobs side by side (see trainer.jobs); on SQLite run exactly one.

Per job, each stage leaves an event the tenant can read (GET /v1/fine_tuning/jobs/{id}/events):

1. dataset: load the job's snapshot, or build one from its uploaded files or, without
   files, from the tenant's feedback (trainer.datasets); the job records its id;
2. train: LoRA SFT or DPO on TRL (trainer.compute; DPO starts from the adapter the job
   names, else from the adapter it will replace) in its own process(es) on the devices of
   TAILOR_TRAINER_DEVICES, into `<data_dir>/jobs/<job id>`, with a metrics event per step
   and the heartbeat checked every few seconds. Cancellation stops the run at the next
   step; then nothing is registered. A pause stops it at the next step too, after a
   checkpoint: the job is `paused` (trainer.job_queue.mark_paused) and the worker moves on; once
   resumed, a worker trains the remaining steps from that checkpoint (see jobs.ResumePoint
   for what is and is not restored);
3. checkpoints: every `checkpoint_every` steps (and the final adapter), copied to the blob
   store under `checkpoints/<tenant>/<job>/step-<n>/` and to the adapter store (so each is
   callable as `name:<job id>:ckpt-step-<n>`, adapters.checkpoints), listed as JobCheckpoint rows;
4. evaluate the trained adapter against the version it would replace (or the base model)
   on the snapshot's held-out split: both generate and are scored on a vLLM engine
   (trainer.compute.evaluation; TAILOR_EVAL_ENGINE_URL, else an engine of the worker's own),
   then gated (trainer.gates);
5. register it as a candidate version with its lineage (job, dataset, parent, metrics),
   record the Evaluation and a report (`reports/<tenant>/<job>/report.json|loss.png`);
6. apply the decision: promote (or start a canary) when the tenant's policy says
   auto_promote or the name has no serving version yet; keep it a candidate otherwise;
   reject it when the gates fail. The job succeeds either way, naming `<name>@v<n>`.

Evaluation runs before registration (not after) so the version's lineage metrics include
how it did on held-out data; nothing about the files changes in between.

Any failure fails the job with {code, message}; the working directory always goes.

The loop and the `tailor-trainer` command are trainer.worker.loop; each stage is a module of
its own (training, distillation, evaluating, decision), taking the Worker it runs for.
"""

from trainer.worker.loop import HEARTBEAT_S, STALE_AFTER_S, Worker, main

__all__ = ["HEARTBEAT_S", "STALE_AFTER_S", "Worker", "main"]
