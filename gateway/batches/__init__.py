"""OpenAI's Batch API: a file of requests, answered in the background into output files.

How a batch goes, module by module:

- `input_file`: a client uploads a JSONL file with purpose `batch`, one request a line
  (`{"custom_id", "method": "POST", "url", "body"}`); it is checked whole when uploaded
  (a 400 naming the line, nothing stored) and again when a batch is created from it.
- `store`: `POST /v1/batches` creates the batch (`validating`); retrieve, list and cancel
  are plain tenant-scoped functions on the `batches` table.
- `lease`: a gateway claims a batch with a lease (`in_progress`), renews it while it works,
  records every finished line in `batch_lines` in the transaction that checks the lease is
  still its own, and ends the batch. A gateway that dies stops renewing; when its lease runs
  out another gateway claims the batch and runs only the lines not recorded yet.
- `requests`: one line is answered on the path of a live request (`proxy.complete`, or the
  Responses API's `create` above it) as the tenant, so model routing, adapters, limits and
  quotas, the interaction log, usage metering and redaction apply as they do to live calls;
  as a batch's request: at a lower engine priority, metered as the `batch` tier.
- `slots`: how many lines one gateway runs at once: fewer while interactive requests run.
- `tokens`: the tokens each answered line reports, summed into the batch's `usage`.
- `output`: OpenAI's output line shapes, and the output and error files (purpose
  `batch_output`) written from the recorded lines when the batch ends.
- `runner`: the asyncio task in each gateway that claims batches and runs their lines with
  bounded concurrency, honouring cancellation and the completion window.
"""
