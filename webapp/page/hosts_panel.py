"""The Train tab's "Hosts" setting: where the ranks of a run train (this machine alone, N
processes on it, or the hosts of the studio's hosts file), and a button that checks them."""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from core.errors import StudioError
from core.machine.launch import HOSTS_FILE, Launch
from webapp.page.studio import Studio, explain

ONE, LOCAL, FILE = "one", "local", "file"


@dataclass
class HostsPanel:
    mode: gr.Radio
    processes: gr.Number
    check: gr.Button
    report: gr.Markdown


def build(studio: Studio) -> HostsPanel:
    mode = gr.Radio(
        [
            ("this machine only", ONE),
            ("N processes on this machine", LOCAL),
            (f"the hosts file ({studio.settings.home / HOSTS_FILE})", FILE),
        ],
        value=ONE,
        label="Hosts (data-parallel training through mlx.launch)",
    )
    with gr.Row():
        processes = gr.Number(2, label="Processes (N)", precision=0, minimum=2, maximum=64)
        check = gr.Button("Check hosts", size="sm")
    report = gr.Markdown(elem_id="ls-hosts-report")
    return HostsPanel(mode, processes, check, report)


def launch(studio: Studio, mode: str | None, processes) -> Launch:
    """The Launch the form describes."""
    if mode == LOCAL:
        return Launch(processes=int(processes or 2))
    if mode == FILE:
        return Launch(hostfile=studio.settings.home / HOSTS_FILE)
    return Launch()


def check(studio: Studio, mode: str, processes, model_id: str | None) -> str:
    """Each host's status, as Markdown: reachable, same versions, the base model there."""
    from core.machine.hosts import check_hosts

    try:
        chosen = launch(studio, mode, processes)
        hosts = chosen.hosts()
        chosen.check_backend(hosts)
        model = studio.registry.get(model_id).path if model_id else None
    except StudioError as exc:
        return explain(exc)
    reports = check_hosts(hosts, model)
    lines = [
        f"- {html.escape(r.line())}" if r.ok else f"- **{html.escape(r.line())}**" for r in reports
    ]
    verdict = "All hosts are ready." if all(r.ok for r in reports) else "Fix the hosts in bold."
    return f"**{verdict}**\n" + "\n".join(lines)
