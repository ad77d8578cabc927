"""The `tailor` command: serve the gateway and manage tenants, keys and adapters.

tailor serve                         # child vLLM engine + gateway on 127.0.0.1:8000
tailor serve --engine-url http://gpu1:8000 --engine-url http://gpu2:8000
tailor serve --workers 4              # four gateway processes, one engine and trainer
tailor tenants create acme
tailor keys create acme --json
tailor adapters register acme support ./my-peft-adapter
tailor distill acme --adapter support-lite --inputs questions.txt --system-prompt-file prompt.md --wait
tailor files from-stored acme --model big-model --metadata task=tickets
tailor derive-model models/SmolLM2-135M-Instruct models/SmolLM2-15L --keep-layers every-other

One module per command group (serve, jobs, distill, stored, usage, tenants, adapters); the
table below names every command once, in the order `tailor --help` lists them.
"""

from __future__ import annotations

import typer

from gateway.cli import adapters, distill, jobs, serve, stored, tenants, usage

app = typer.Typer(
    help="Tailor: OpenAI-compatible gateway with per-tenant LoRA adapters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
tenants_app = typer.Typer(help="Create, list and delete tenants.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list, rotate and revoke API keys.", no_args_is_help=True)
adapters_app = typer.Typer(help="Register, list, activate and roll back adapters.", no_args_is_help=True)
files_app = typer.Typer(help="Training files made from what Tailor stored.", no_args_is_help=True)
app.add_typer(tenants_app, name="tenants")
app.add_typer(keys_app, name="keys")
app.add_typer(adapters_app, name="adapters")
app.add_typer(files_app, name="files")

app.command()(serve.serve)
app.command("train")(jobs.train_cmd)
app.command("distill")(distill.distill_cmd)
files_app.command("from-stored")(stored.files_from_stored)
app.command("usage")(usage.usage_cmd)
app.command("prepare-model")(serve.prepare_model)
app.command("derive-model")(serve.derive_model_cmd)
app.command("migrate")(serve.migrate_cmd)

tenants_app.command("create")(tenants.tenants_create)
tenants_app.command("list")(tenants.tenants_list)
tenants_app.command("delete")(tenants.tenants_delete)
keys_app.command("create")(tenants.keys_create)
keys_app.command("list")(tenants.keys_list)
keys_app.command("revoke")(tenants.keys_revoke)
keys_app.command("rotate")(tenants.keys_rotate)

adapters_app.command("register")(adapters.adapters_register)
adapters_app.command("list")(adapters.adapters_list)
adapters_app.command("activate")(adapters.adapters_activate)
adapters_app.command("rollback")(adapters.adapters_rollback)
adapters_app.command("canary")(adapters.adapters_canary)
adapters_app.command("lineage")(adapters.adapters_lineage)

__all__ = ["app"]
