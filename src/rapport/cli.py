"""The ``rapport`` command line. Sub-commands live next to what they drive; this file wires them."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import replace

import typer

from rapport import accounts, metrics
from rapport.settings import get_settings
from rapport.workspace import Workspace

app = typer.Typer(no_args_is_help=True, help="Rapport: customer data platform and lead engine.")
token_app = typer.Typer(no_args_is_help=True, help="API tokens.")
app.add_typer(token_app, name="token")
warehouse_app = typer.Typer(no_args_is_help=True, help="The warehouse.")
app.add_typer(warehouse_app, name="warehouse")


def workspace() -> Workspace:
    return Workspace()


@app.command()
def init() -> None:
    """Create the workspace (idempotent); print the admin password the first time."""
    ws = workspace()
    password = ws.init()
    ws.close()
    if password:
        typer.echo(f"Workspace created in {ws.settings.home}.")
        typer.echo(f"Admin user: admin   password: {password}   (shown once)")
    else:
        typer.echo(f"Workspace in {ws.settings.home} is up to date.")


@app.command()
def serve(
    host: str = typer.Option(None, help="Interface to bind (default from settings)."),
    port: int = typer.Option(None, help="Port (default from settings)."),
    role: str = typer.Option(
        "all",
        help="all: collector, API, console, follower and dispatcher; collector: only /v1, "
        "/healthz and /metrics (run several on a shared NATS log); api: the API and console "
        "only (stage 1, dispatchers and jobs run as `rapport worker ...`). Neither of the "
        "last two starts children.",
    ),
    children_metrics: int = typer.Option(
        0,
        "--children-metrics-port",
        help="Expose the follower's metrics on 127.0.0.1:N/metrics and the dispatcher's on "
        "N+1 (the server's own are at /metrics); 0: off.",
    ),
) -> None:
    """Serve the collector, the API and the console on one port."""
    import uvicorn

    from rapport.supervise import (
        Child,
        SupervisedServer,
        Supervisor,
        background_and_die_with_parent,
        die_with_parent,
        log_config,
    )
    from rapport.web.app import create_app
    from rapport.web.collector_app import create_collector_app, without_collector

    if role not in ("all", "collector", "api"):
        raise typer.BadParameter(f"--role {role!r}: one of all, collector, api")

    settings = replace(
        get_settings(),
        loader_in_process=False,
        log_writer_process=True,
        dispatcher_in_process=False,
    )
    ws = Workspace(settings)
    password = ws.init()
    if password:  # the first start of a new workspace: the only time the password is shown
        typer.echo(f"Admin user: admin   password: {password}   (shown once)")
    parent = ["--parent", str(os.getpid())]
    watch = ["--metrics-port", str(children_metrics)] if children_metrics else []
    watch_next = ["--metrics-port", str(children_metrics + 1)] if children_metrics else []
    rapport = [sys.executable, "-m", "rapport"]
    children: list[Child] = []
    if role == "all":  # in a cluster, stage 1, dispatchers and jobs are workers of their own
        children = [
            Child(
                "follower",
                [*rapport, "warehouse", "follow", *parent, *watch],
                background_and_die_with_parent,
            ),
            Child(  # deliveries: their own interpreter, at full priority
                "dispatcher",
                [*rapport, "delivery", "dispatch", *parent, *watch_next],
                die_with_parent,
            ),
        ]
    app = (
        create_collector_app(ws)
        if role == "collector"
        else without_collector(create_app(workspace=ws))
        if role == "api"
        else create_app(workspace=ws)
    )
    config = uvicorn.Config(
        app,
        host=host or ws.settings.host,
        port=port or ws.settings.port,
        log_level="info",
        log_config=log_config(),
        access_log=False,
    )
    supervisor = Supervisor(children)
    server = SupervisedServer(config, supervisor)
    supervisor.start()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
    finally:
        supervisor.stop()
    if not server.started:  # e.g. the port in use: as uvicorn.run exits
        raise typer.Exit(3)


@warehouse_app.command("follow")
def warehouse_follow(
    parent: int = typer.Option(None, help="Stop when this process id is no longer the parent."),
    metrics_port: str = typer.Option("0", "--metrics-port", help=metrics.PORT_HELP),
) -> None:
    """Load the event log into the warehouse and resolve identities continuously
    (``rapport serve`` starts this)."""
    from rapport.stream.follow import follow

    metrics.serve_cli(metrics_port, "follower")
    with contextlib.suppress(KeyboardInterrupt):
        follow(workspace(), parent=parent)


@warehouse_app.command("export-parquet")
def warehouse_export_parquet(
    full: bool = typer.Option(False, "--full", help="Rewrite every day, not only changed ones."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Write the warehouse as Parquet for Spark (``warehouse_backend = "spark"``): events
    partitioned by day (only changed days), profiles, items, tags, segments."""
    from rapport.warehouse.parquet import export

    report = export(workspace(), full=full)
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
        return
    typer.echo(
        f"{report.path}: {report.days_written} days written ({report.events_written:,} events), "
        f"{report.days_unchanged} unchanged, {report.days_removed} removed; "
        + ", ".join(f"{name} {rows:,}" for name, rows in report.tables.items())
        + f" ({report.seconds:.1f} s)"
    )


@token_app.command("create")
def token_create(
    role: accounts.Role = typer.Option(accounts.Role.admin, help="Role of the token."),
    name: str = typer.Option("cli", help="A label for the token."),
    scopes: str = typer.Option(
        None, help="Comma list of ingest, read, write, admin (default: what the role implies)."
    ),
    expires: str = typer.Option(None, help="Lifetime, e.g. 90d (default: never expires)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Create a bearer token for the API (shown once)."""
    ws = workspace()
    ws.init()
    try:
        chosen = accounts.parse_scopes(scopes) if scopes else None
        until = accounts.now() + accounts.parse_duration("--expires", expires) if expires else None
        token, token_id = accounts.issue_token(ws.db, role, name, None, chosen, until)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    made = accounts.find_token(ws.db, token_id)
    accounts.audit(
        ws.db,
        _cli_actor(),
        "token.create",
        name,
        id=token_id,
        role=role.value,
        scopes=made["scopes"],
    )
    out = {"token": token, "id": token_id, "role": role.value, "name": name}
    out |= {"scopes": made["scopes"], "expires_at": _iso(until)}
    typer.echo(json.dumps(out) if as_json else token)


@token_app.command("list")
def token_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every token (never its secret): id, name, role, scopes, status, created, last used,
    expires."""
    ws = workspace()
    ws.init()
    tokens = accounts.list_tokens(ws.db)
    if as_json:
        keys = ("created_at", "last_used_at", "expires_at", "revoked_at")
        typer.echo(json.dumps([{**t, **{k: _iso(t[k]) for k in keys}} for t in tokens]))
        return
    typer.echo(
        f"{'ID':>4}  {'NAME':<20} {'ROLE':<9} {'SCOPES':<22} {'STATUS':<9} "
        f"{'CREATED':<19}  {'LAST USED':<19}  EXPIRES"
    )
    for t in tokens:
        typer.echo(
            f"{t['id']:>4}  {t['name']:<20} {t['role']:<9} {','.join(t['scopes']):<22} "
            f"{t['status']:<9} {_when(t['created_at']):<19}  {_when(t['last_used_at']):<19}  "
            f"{_when(t['expires_at'])}"
        )


@token_app.command("rotate")
def token_rotate(
    name: str = typer.Argument(None, help="The token's name (see `rapport token list`)."),
    token_id: int = typer.Option(None, "--id", help="The token's id, if names are shared."),
    grace: str = typer.Option("0", help="How long the old secret keeps working, e.g. 1h."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """A new secret for a token (shown once); the old one fails after the grace period."""
    ws = workspace()
    ws.init()
    try:
        old = accounts.find_token(ws.db, token_id if token_id is not None else _named(name))
        delta = accounts.parse_duration("--grace", grace)
        token, new_id = accounts.rotate_token(ws.db, old["id"], delta)
    except (ValueError, LookupError, accounts.TokenRejected) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    accounts.audit(
        ws.db,
        _cli_actor(),
        "token.rotate",
        old["name"],
        id=old["id"],
        new_id=new_id,
        grace_s=int(delta.total_seconds()),
    )
    out = {"token": token, "id": new_id, "name": old["name"], "replaces": old["id"]}
    out["old_valid_until"] = _iso(accounts.now() + delta)
    typer.echo(json.dumps(out) if as_json else token)


@token_app.command("revoke")
def token_revoke(
    name: str = typer.Argument(None, help="Revoke every token of this name."),
    token_id: int = typer.Option(None, "--id", help="Revoke only the token with this id."),
) -> None:
    """Stop a token now (with a name: each of its tokens, old secrets in a grace period too)."""
    ws = workspace()
    ws.init()
    if token_id is not None:
        ids = [token_id]
    else:
        live = ("active", "rotating", "expired")
        ids = [
            t["id"]
            for t in accounts.list_tokens(ws.db)
            if t["name"] == _named(name) and t["status"] in live
        ]
        if not ids:
            typer.echo(
                f"error: no unrevoked token named {name!r} (see `rapport token list`)", err=True
            )
            raise typer.Exit(1)
    for one in ids:
        try:
            done = accounts.revoke_token(ws.db, one)
        except LookupError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        accounts.audit(ws.db, _cli_actor(), "token.revoke", done["name"], id=one)
        typer.echo(f"Revoked token {one} ({done['name']}).")


def _named(name: str | None) -> str:
    if not name:
        raise typer.BadParameter("give the token's NAME or --id")
    return name


def _cli_actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _iso(value: object) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else None


def _when(value: object) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if hasattr(value, "strftime") else "-"


def _register() -> None:
    """Sub-command groups contributed by packages (each exposes a Typer ``cli``)."""
    import importlib

    for module, name in [
        ("rapport.ingest.cli", "source"),
        ("rapport.ingest.events_cli", "events"),
        ("rapport.ingest.import_cli", "import"),
        ("rapport.catalog.cli", "plan"),
        ("rapport.ingest.quarantine_cli", "quarantine"),
        ("rapport.demo.cli", "demo"),
        ("rapport.identity.cli", "identity"),
        ("rapport.tags.cli", "tags"),
        ("rapport.segments.cli", "segments"),
        ("rapport.delivery.cli", "delivery"),
        ("rapport.jobs.cli", "jobs"),
        ("rapport.stream.cli", "worker"),
        ("rapport.recommend.cli", "recommend"),
        ("rapport.campaigns.cli", "campaigns"),
    ]:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        cli = mod.cli
        if isinstance(cli, typer.Typer):
            app.add_typer(cli, name=name)
        else:
            app.command(name)(cli)


_register()
