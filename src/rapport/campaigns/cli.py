"""``rapport campaigns ...``: list, plan, approve and send from a shell (operators, scripts);
the same functions as ``/api/campaigns``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import typer

from rapport.campaigns.model import CampaignError, CampaignNotFound
from rapport.workspace import Workspace

cli = typer.Typer(no_args_is_help=True, help="Campaigns: plan, approve, send.")
REF = typer.Argument(..., help="The campaign's id or name.")
ACTOR = typer.Option(..., "--as", help="Who does it (recorded; approval needs another user).")


def _run(call: Callable[[Workspace], Any]) -> None:
    ws = Workspace()
    ws.init()
    try:
        typer.echo(json.dumps(call(ws), ensure_ascii=False, default=str))
    except (CampaignError, CampaignNotFound) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    finally:
        ws.close()


@cli.command("list")
def list_cmd() -> None:
    """Every campaign (JSON)."""
    from rapport.campaigns.store import list_campaigns

    _run(list_campaigns)


@cli.command("plan")
def plan_cmd(ref: str = REF, actor: str = ACTOR) -> None:
    """Plan now and print the summary."""
    from rapport.campaigns.plan import plan

    _run(lambda ws: plan(ws, ref, actor))


@cli.command("approve")
def approve_cmd(ref: str = REF, actor: str = ACTOR) -> None:
    from rapport.campaigns.send import approve

    _run(lambda ws: approve(ws, ref, actor))


@cli.command("send")
def send_cmd(ref: str = REF) -> None:
    """Enqueue the planned messages (run again after a stop: nothing is sent twice)."""
    from rapport.campaigns.send import send

    _run(lambda ws: send(ws, ref))
