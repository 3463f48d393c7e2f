"""`L` (the lineages and their adapters) and `e` (export the selected job's adapter): the lineage
text from scripted data and from a real adapters folder, the keys through Textual's Pilot, and an
export from the real console on a real workspace, run as a real `trainconsole export` process."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
from pathlib import Path

import pytest
from textual.widgets import Checkbox, Input, Static

from tests.chatdata import line
from tests.console.fakes import ScriptedClient, lineage_list
from tests.console.test_app_keys import console, select, settle, until
from trainconsole.console.app import TrainConsole
from trainconsole.console.client import WorkspaceClient
from trainconsole.console.exporting import ExportResult
from trainconsole.console.widgets.export_dialog import ExportDialog
from trainconsole.console.widgets.lineage_view import LineageScreen, lineage_text
from trainconsole.engine import checkpoints as ckpt
from trainconsole.engine import fsio
from trainconsole.engine.adapters import lineages, pointer_name
from trainconsole.engine.config import load_config
from trainconsole.engine.layout import Layout
from trainconsole.engine.store import Store

LINE = line("hi", "yo").encode()


def publish(adapters: Path, number: int, job_id: str, *, lineage: str = "main", parent: str | None = None,
            step: int = 8, eval_loss: float | None = None) -> Path:
    """A sealed adapter folder as the worker publishes one (files, lineage.json, the manifest
    last), and the lineage's pointer moved to it."""
    name = f"{number:04d}-{job_id}"
    staging = fsio.new_staging(adapters, name)
    (staging / "adapter_model.safetensors").write_bytes(b"x" * 16)
    (staging / "adapter_config.json").write_text('{"r": 8}')
    meta = {"schema": 1, "job_id": job_id, "lineage": lineage, "parent": parent, "global_step": step,
            "base": {"name": "builtin:tiny-chat"}, "created_at": 1_780_000_000.0 + number}
    if eval_loss is not None:
        meta["eval_loss"] = eval_loss
    (staging / "lineage.json").write_text(json.dumps(meta))
    ckpt.publish(staging, adapters / name, kind="adapter", step=step, fingerprint={}, extra={"job_id": job_id})
    pointer = adapters / pointer_name(lineage)
    if pointer.is_symlink():
        pointer.unlink()
    os.symlink(name, pointer)
    return adapters / name


def test_lineage_text_lists_lineages_adapters_and_marks_the_newest() -> None:
    text = lineage_text(lineage_list()).plain
    lines = text.splitlines()
    assert lines[0].split() == ["adapter", "job", "step", "eval", "loss", "parent"]
    assert lines[1].startswith("lineage main  base builtin:tiny-chat, 2 adapters, newest 0003-j0006")
    assert lines[2].split() == ["0001-j0001", "j0001", "200", "0.8123", "-", "(base)"]
    assert lines[3].split() == ["*", "0003-j0006", "j0006", "400", "0.6541", "0001-j0001"]
    assert lines[5] == "lineage lr-sweep.learning_rate=0.0002"  # too long for the rest: below it
    assert lines[6] == "  base builtin:tiny-chat, 1 adapter, newest 0002-j0007"
    assert lines[7].split() == ["*", "0002-j0007", "j0007", "120", "-", "-", "(base)"]
    assert all(len(row) <= 72 for row in lines)  # the box at 80 columns


def test_lineage_text_from_a_real_adapters_folder(tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    assert "no adapters yet" in lineage_text(lineages(adapters)).plain
    first = publish(adapters, 1, "j0001", eval_loss=1.25)
    publish(adapters, 2, "j0002", parent=str(first), step=16, eval_loss=0.9)
    publish(adapters, 3, "j0003", lineage="support-v2", step=4)
    lines = lineage_text(lineages(adapters)).plain.splitlines()
    assert lines[2].split() == ["0001-j0001", "j0001", "8", "1.25", "-", "(base)"]
    # A parent written as a path shows as its folder's name; the pointer's target is marked.
    assert lines[3].split() == ["*", "0002-j0002", "j0002", "16", "0.9", "0001-j0001"]
    assert lines[5].startswith("lineage support-v2") and "1 adapter," in lines[5]
    assert lines[6].split()[:2] == ["*", "0003-j0003"]


async def test_L_shows_the_lineages_and_escape_closes_it() -> None:
    async with console(readonly=True, size=(80, 24)) as (app, pilot, client):
        await pilot.press("L")
        await until(pilot, lambda: isinstance(app.screen, LineageScreen))
        body = app.screen.query_one("#lineage-body", Static)
        await until(pilot, lambda: "0003-j0006" in str(body.render()))
        assert ("lineages",) in client.calls
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, LineageScreen) and app.is_running


async def test_e_asks_for_a_folder_with_a_merge_choice_and_exports() -> None:
    async with console() as (app, pilot, client):
        await select(app, pilot, "j0001")
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, ExportDialog))
        box = app.screen.query_one("#export-out", Input)
        assert box.value == "/ws/exports/main-j0001"
        app.screen.query_one("#export-merge", Checkbox).value = True
        await pilot.press("enter")
        await until(pilot, lambda: any(c[0] == "export" for c in client.calls))
        assert ("export", "0001-j0001", "/ws/exports/main-j0001", True) in client.calls
        await until(pilot, lambda: any("exported merged model" in str(n.message) for n in app._notifications))


async def test_e_escape_exports_nothing_and_a_job_without_adapter_is_refused_in_one_line() -> None:
    async with console() as (app, pilot, client):
        await select(app, pilot, "j0001")
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, ExportDialog))
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, ExportDialog)
        await select(app, pilot, "j0003")
        await pilot.press("e")
        await until(pilot, lambda: any("no published adapter" in str(n.message) for n in app._notifications))
        await settle(app, pilot)
        assert not isinstance(app.screen, ExportDialog)
        assert not [c for c in client.calls if c[0] == "export"]


async def test_readonly_hides_and_refuses_export() -> None:
    async with console(readonly=True) as (app, pilot, client):
        await select(app, pilot, "j0001")
        assert app.check_action("export", ()) is False
        assert app.check_action("lineages", ()) is True  # looking is allowed
        await pilot.press("e")
        await settle(app, pilot)
        assert not isinstance(app.screen, ExportDialog) and client.calls == []


def test_the_keymap_binds_L_and_e_and_the_help_lists_them() -> None:
    from trainconsole.console.keymap import KEYMAP, help_rows

    bound = {name: key.action for key in KEYMAP for name in key.keys.split(",")}
    assert bound["L"] == "lineages" and bound["e"] == "export"
    rows = {row[0]: row for row in help_rows(readonly=False)}
    assert "lineages" in rows["L"][1] and "export" in rows["e"][1] and rows["e"][2]  # mutating
    assert "e" not in {row[0] for row in help_rows(readonly=True)}


# --- the real console on a real workspace, the export a real process -------------------------------


def _job(layout: Layout, name: str) -> str:
    src = layout.tmp / name
    src.write_bytes(LINE)
    with Store.open(layout) as store:
        job = store.add_job(name, src, hashlib.sha256(LINE).hexdigest() + name, len(LINE))
    assert job is not None
    return job.id


@pytest.mark.timeout(180)
async def test_export_from_the_real_console_runs_trainconsole_export(workspace: Path) -> None:
    cfg = load_config(workspace / "config.toml")
    layout = cfg.layout()
    layout.ensure()
    done, waiting = _job(layout, "a.jsonl"), _job(layout, "b.jsonl")
    with Store.open(layout) as store:
        store.start(done, None, None)
        published = publish(layout.adapters, 1, done, eval_loss=0.5)
        store.succeed(done, adapter=str(published))
    client = WorkspaceClient(cfg)
    app = TrainConsole(client, poll_interval=0.25, watch_terminal=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.first_frame.wait()
        await pilot.pause()
        await select(app, pilot, waiting)
        await pilot.press("e")
        await until(pilot, lambda: any("has no published adapter" in str(n.message) for n in app._notifications))
        assert not isinstance(app.screen, ExportDialog)

        await select(app, pilot, done)
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, ExportDialog))
        want = workspace / "exports" / f"main-{done}"
        assert app.screen.query_one("#export-out", Input).value == str(want)
        await pilot.press("enter")
        await until(pilot, lambda: any("exported adapter" in str(n.message) for n in app._notifications), 120)
        assert sorted(p.name for p in want.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                          "lineage.json"]
        assert (want / "adapter_model.safetensors").read_bytes() == (published / "adapter_model.safetensors").read_bytes()

        # Asked again, the default moves aside; a folder that exists is refused by the command, in one line.
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, ExportDialog))
        box = app.screen.query_one("#export-out", Input)
        assert box.value == f"{want}-2"
        box.value = str(want)
        await pilot.press("enter")
        await until(pilot, lambda: any("already exists" in str(n.message) for n in app._notifications), 120)
        failed = next(n for n in app._notifications if "already exists" in str(n.message))
        assert str(failed.message) == f"export of 0001-{done} failed: {want}: already exists; give a new folder"
        assert failed.severity == "error"
    client.close()


@pytest.mark.timeout(120)
async def test_quitting_does_not_wait_for_a_running_export() -> None:
    """A merge takes minutes: q closes the console at once and leaves the export process to end
    alone. `trainconsole` runs the app with asyncio.run, which joins the loop's default executor
    (where thread workers run) on its way out: that join must not wait for the export."""
    release = threading.Event()

    class SlowExport(ScriptedClient):
        def export(self, adapter: str, out: Path, merge: bool) -> ExportResult:
            self.calls.append(("export started",))
            release.wait()
            return super().export(adapter, out, merge)

    try:
        async with console(SlowExport()) as (app, pilot, client):
            await select(app, pilot, "j0001")
            await pilot.press("e")
            await until(pilot, lambda: isinstance(app.screen, ExportDialog))
            await pilot.press("enter")
            await until(pilot, lambda: ("export started",) in client.calls)
            await pilot.press("q")
            await pilot.pause()
        assert not app.is_running
        # What asyncio.run does last; the export still runs (a hang here fails on the timeout).
        await asyncio.wait_for(asyncio.get_running_loop().shutdown_default_executor(), 60)
        assert not release.is_set()
    finally:
        release.set()
