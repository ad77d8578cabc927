"""The trainer's compute side: everything that needs torch.

The domain (jobs, files, datasets, feedback, policies, gates) lives in `trainer/` and
imports no torch, so the gateway can use it; this package trains and is imported only by
the worker process (`python -m trainer.worker`) and by the training processes it launches.

    recipe.py     what one training run is told (a JSON file handed to the training process)
    placement.py  which devices, which precision, how many processes
    encoding.py   chat conversations -> token ids and the assistant-only loss mask
    sft.py, dpo.py, kto.py   one module per method, each on its TRL trainer
    run.py        one training run in this process: model, LoRA, TRL trainer, callbacks, atomic save
    callbacks.py  what TRL does not do: progress lines, cancellation, checkpoints
    launch.py     the training process: `python -m trainer.compute.launch RECIPE.json`, one process or
                  `accelerate launch` / torchrun with one process per device, supervised by the worker
    engine.py     vLLM engines as the worker uses them: a client, its own engine, which one to use
    evaluation.py candidate vs incumbent generated and scored on an engine (trainer.evaluate scores)
    synthetic.py  random models of known shapes with a chat tokenizer, for speed checks without weights
"""
