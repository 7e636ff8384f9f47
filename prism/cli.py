"""The ``prism`` command: a thin layer over the public API (Runner, catalog, synth).

Exit codes: 0 every title succeeded (stages skipped as up to date count as success),
1 at least one title failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from prism import __version__
from prism.errors import ConfigError, StorageError
from prism.runner import Runner, StageOutcome, TitleOutcome
from prism.schedule import STAGE_THREAD_PREFIX

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Prism video preprocessing.")
console = Console(stderr=True)
out_console = Console()

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
STATUS_STYLE = {"succeeded": "green", "failed": "red", "skipped": "yellow", "blocked": "yellow", "stale": "yellow",
                "running": "cyan"}  # fmt: skip
DEFAULT_OUT = Path("prism-out")


class _ProgressEvents:
    """Draws one progress bar per stage of the title being processed."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks: dict[tuple[str, str], Any] = {}

    def stage_started(self, title_id: str, stage: str) -> None:
        self.tasks[(title_id, stage)] = self.progress.add_task(f"{title_id} · {stage}", total=None)

    def stage_progress(self, title_id: str, stage: str, done: int, total: int | None, label: str) -> None:
        task = self.tasks.get((title_id, stage))
        if task is not None:
            self.progress.update(task, completed=done, total=total, description=f"{title_id} · {stage} · {label}")

    def stage_finished(self, title_id: str, outcome: StageOutcome) -> None:
        task = self.tasks.pop((title_id, outcome.stage), None)
        if task is not None:
            total = self.progress.tasks[task].total or 1
            self.progress.update(
                task, completed=total, total=total, description=f"{title_id} · {outcome.stage} · {outcome.status}"
            )


def _stage_list(stages: str | None) -> list[str] | None:
    """``--stages``: None (not given) means every stage; given, it must name at least one."""
    if stages is None:
        return None
    wanted = [s.strip() for s in stages.split(",") if s.strip()]
    if not wanted:
        raise ConfigError(f"--stages {stages!r} names no stage; leave it out to run every stage")
    return wanted


def _parse_params(items: list[str]) -> dict[str, dict[str, Any]]:
    params: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        stage, dot, name = key.partition(".")
        if not sep or not dot or not stage or not name:
            raise ConfigError(f"--param expects STAGE.NAME=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        params.setdefault(stage, {})[name] = value
    return params


def _summary_table(outcomes: list[TitleOutcome]) -> Table:
    table = Table(title="Prism run summary")
    for col in ("title", "stage", "status", "time", "result"):
        table.add_column(col)
    for title in outcomes:
        for o in title.stages:
            status = "skipped (up to date)" if o.reused else ("skipped" if o.blocked else o.status)  # as before blocked
            detail = "" if o.reused else (o.summary if o.status == "succeeded" else (o.reason or ""))
            table.add_row(
                title.title_id, o.stage, f"[{STATUS_STYLE[o.status]}]{status}[/]", f"{o.duration_s:.1f}s", detail
            )
    return table


@app.command()
def run(
    # readable=False: click would abort the whole batch (exit 2) on one unreadable file; the runner fails that title
    videos: list[Path] = typer.Argument(..., help="Video files to process.", readable=False),
    out: Path = typer.Option(DEFAULT_OUT, "--out", "-o", help="Output directory (titles/ and catalog)."),
    stages: str | None = typer.Option(None, "--stages", "-s", help="Comma-separated stages (default: all)."),
    force: bool = typer.Option(False, "--force", help="Rerun stages even if their outputs are up to date."),
    param: list[str] = typer.Option([], "--param", "-p", help="Stage parameter, STAGE.NAME=VALUE (repeatable)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    report: bool = typer.Option(False, "--report", help="Also write each title's HTML report (see `prism report`)."),
) -> None:
    """Process VIDEOS into OUT/titles/<title_id>/ and print a summary."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        wanted = _stage_list(stages)
        runner = Runner(out, params=_parse_params(param), force=force)
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=False,
        ) as progress:  # fmt: skip
            runner.events = _ProgressEvents(progress)
            outcomes = runner.run([*videos], wanted)
    except (ConfigError, StorageError) as exc:  # bad params, or an output directory/catalog that cannot be used
        console.print(f"[red]error:[/] {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        console.print(
            "[red]interrupted:[/] stopped; stages that finished are recorded, the one interrupted keeps its "
            "previous results; run the same command again to finish",
            soft_wrap=True,
            highlight=False,
        )
        if any(t.name.startswith(STAGE_THREAD_PREFIX) and t.is_alive() for t in threading.enumerate()):
            # a stage still inside a native call (a model loading, an inference) past the grace: the
            # interpreter's shutdown would wait on or abort in it ("terminate called..."); nothing is
            # left to record (the runner commits nothing after Ctrl-C), so leave at once
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    out_console.print(_summary_table(outcomes))
    for title in outcomes:
        if title.status == "failed":
            console.print(f"[red]FAILED[/] {title.reason}", soft_wrap=True, highlight=False)
    ok = sum(t.status == "succeeded" for t in outcomes)
    out_console.print(f"{ok}/{len(outcomes)} titles succeeded; artifacts in {out / 'titles'}", soft_wrap=True)
    recorded = [t for t in outcomes if t.recorded]  # not a title whose id another source holds
    if report and not all([_write_report(t.title_dir, None) for t in recorded]):  # every title, even after a failure
        raise typer.Exit(EXIT_FAILED)
    raise typer.Exit(EXIT_OK if ok == len(outcomes) else EXIT_FAILED)


def _write_report(tdir: Path, output: Path | None) -> bool:
    from prism.report import ReportError, write_report

    try:
        out_console.print(f"report: {write_report(tdir, output)}", soft_wrap=True, highlight=False)
        return True
    except ReportError as exc:
        console.print(f"[red]error:[/] {exc}", soft_wrap=True, highlight=False)
        return False


@app.command()
def report(
    title: str = typer.Argument(..., help="A processed title id."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", "-o", help="Output directory of the run."),
    output: Path | None = typer.Option(None, "--output", help="HTML file to write (default OUT/reports/TITLE.html)."),
) -> None:
    """Write a self-contained HTML page of a processed title: shots, keyframes, cues, speech, loudness, stages."""
    from prism.artifacts import title_dir

    raise typer.Exit(EXIT_OK if _write_report(title_dir(out, title), output) else EXIT_FAILED)


@app.command()
def status(
    title: str | None = typer.Argument(None, help="A title id; omit to list all titles."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", "-o", help="Output directory holding catalog.sqlite."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    env: str | None = typer.Option(None, "--env", help="Read a deployed environment's DynamoDB catalog instead."),
) -> None:
    """Show what the catalog knows: every title, or the stages of one."""
    from prism.catalog import SQLiteCatalog

    path: Path | str = out / "catalog.sqlite"  # or the name of a cloud catalog, for messages
    if env:
        from prism.cloud.ops import cloud_catalog

        catalog, path = cloud_catalog(env), f"the {env} catalog"
    elif not Path(path).exists():
        console.print(f"[red]error:[/] no catalog at {path} (run `prism run` first or pass --out)")
        raise typer.Exit(EXIT_USAGE)
    else:
        try:
            catalog = SQLiteCatalog(path)
        except StorageError as exc:
            console.print(f"[red]error:[/] {exc}", soft_wrap=True, highlight=False)
            raise typer.Exit(EXIT_USAGE) from None
    if title is None:
        rows = [vars(t) for t in catalog.list_titles()]
        columns: tuple[str, ...] = ("title_id", "status", "reason", "updated_at", "source_uri")
    else:
        if catalog.get_title(title) is None:
            console.print(f"[red]error:[/] title {title!r} is not in {path}")
            raise typer.Exit(EXIT_FAILED)
        rows = [vars(s) for s in catalog.list_stages(title)]
        columns = (
            "stage",
            "status",
            "reason",
            "model_name",
            "model_version",
            "params_hash",
            "duration_s",
            "finished_at",
        )
    if as_json:
        out_console.print_json(json.dumps(rows, default=str))
        return
    table = Table()
    for col in columns:
        table.add_column(col)
    for row in rows:
        cells = ["" if row[c] is None else str(row[c]) for c in columns]
        if row.get("status") in STATUS_STYLE:
            cells[columns.index("status")] = f"[{STATUS_STYLE[row['status']]}]{row['status']}[/]"
        table.add_row(*cells)
    out_console.print(table)


@app.command()
def reprocess(
    env: str = typer.Option(..., "--env", help="Deployed environment (dev, staging, prod)."),
    titles: str = typer.Option(..., "--titles", help="Comma-separated title ids."),
    stages: str | None = typer.Option(None, "--stages", "-s", help="Comma-separated stages (default: all)."),
    force: bool = typer.Option(False, "--force", help="Rerun the stages even if their outputs are up to date."),
    language: str = typer.Option("", "--language", help="Language hint for the audio stage (e.g. ko)."),
) -> None:
    """Start a manual Step Functions run of the deployed pipeline for TITLES (see docs/deploy.md)."""
    from prism.cloud.ops import start_manual_run

    wanted = [t.strip() for t in titles.split(",") if t.strip()]
    try:
        chosen = _stage_list(stages) or []
        arn = start_manual_run(env, wanted, chosen, force, language=language)
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    out_console.print(f"started {arn}")
    out_console.print(f"follow it with: aws stepfunctions describe-execution --execution-arn {arn}")


@app.command()
def show(
    title: str = typer.Argument(..., help="A processed title id."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", "-o", help="Output directory of the run."),
    limit: int = typer.Option(50, help="Rows to show per table."),
) -> None:
    """Print a processed title's tables: the columns each stage declares to show (shots, keyframes, cues)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prism.artifacts import read_manifest_checked, title_dir
    from prism.stages.base import registry

    tdir = title_dir(out, title)
    try:
        manifest = read_manifest_checked(tdir)
    except StorageError as exc:
        console.print(f"[red]error:[/] {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(EXIT_FAILED) from None
    if manifest is None:
        console.print(f"[red]error:[/] no manifest at {tdir} (run `prism run` first or pass --out)")
        raise typer.Exit(EXIT_FAILED)
    stages = sorted(registry().values(), key=lambda cls: (cls.display_order, cls.name))
    views = {output.path: output.show for cls in stages for output in cls.outputs if output.show}
    damaged = False
    for name, columns in views.items():
        if not (tdir / name).exists():
            continue
        try:
            rows = pq.read_table(tdir / name, columns=list(columns)).to_pylist()
        except (OSError, ValueError, KeyError, pa.ArrowException) as exc:  # cut short, overwritten, wrong columns
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            console.print(
                f"[red]error:[/] {tdir / name}: damaged ({first}); `prism run --force` on its source rewrites it",
                soft_wrap=True,
                highlight=False,
            )
            damaged = True
            continue
        table = Table(title=f"{title} · {name} ({len(rows)} rows)")
        for col in columns:
            table.add_column(col)
        for row in rows[:limit]:
            table.add_row(
                *(
                    "" if row[c] is None else f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c])
                    for c in columns
                )
            )
        out_console.print(table)
    for stage, entry in manifest["stages"].items():
        if entry["status"] != "succeeded":
            out_console.print(f"{stage}: {entry['status']} — {entry.get('reason')}", soft_wrap=True)
    if damaged:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def qc(
    title: str = typer.Argument(..., help="A processed title id."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", "-o", help="Output directory of the run."),
    profile: str | None = typer.Option(
        None, "--profile", help="Judge against this profile (service, ebu_r128, atsc_a85, or a .toml file)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print qc.json (re-judged under --profile) instead."),
) -> None:
    """Print a title's QC verdict and findings; exit 1 when the verdict is fail.

    A title processed without the qc stage gets it first (its source must still be where it was
    processed; the stages it needs are reused when up to date)."""
    import pyarrow.parquet as pq

    from prism.artifacts import read_manifest, title_dir
    from prism.qc import Finding, evaluate, load_profile
    from prism.stages.qc import report

    tdir = title_dir(out, title)
    manifest = read_manifest(tdir)
    if manifest is None:
        console.print(f"[red]error:[/] no manifest at {tdir} (run `prism run` first or pass --out)")
        raise typer.Exit(EXIT_USAGE)
    try:
        judged_by = load_profile(profile) if profile else None
    except ConfigError as exc:
        console.print(f"[red]error:[/] {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    entry = manifest["stages"].get("qc")
    if not entry or entry["status"] != "succeeded" or not (tdir / "qc.json").is_file():
        source = _local_source(manifest)
        if source is None:
            console.print(f"[red]error:[/] {title}: the qc stage has not run and the source is not here to run it")
            raise typer.Exit(EXIT_USAGE)
        params = {"qc": {"profile": profile}} if profile else {}
        [outcome] = Runner(out, params=params).run([source], ["qc"])
        entry = read_manifest(tdir)["stages"].get("qc") if outcome.recorded else None  # type: ignore[index]
        if not entry or entry["status"] != "succeeded":
            reason = entry["reason"] if entry else outcome.reason
            console.print(f"[red]error:[/] {title}: qc failed: {reason}", soft_wrap=True, highlight=False)
            raise typer.Exit(EXIT_FAILED)
    doc = json.loads((tdir / "qc.json").read_text())
    if judged_by is not None and judged_by.name != doc["profile"]:
        findings = [Finding.from_row(r) for r in pq.read_table(tdir / "qc_findings.parquet").to_pylist()]
        verdict = evaluate(findings, judged_by, doc["duration_s"])
        doc = report(profile or judged_by.name, verdict, findings, doc["fps"], doc["duration_s"], doc["not_checked"])
    if as_json:
        out_console.print_json(json.dumps(doc))
    else:
        style = {"pass": "green", "warn": "yellow", "fail": "red"}[doc["verdict"]]
        counts = doc["counts"]
        out_console.print(
            f"{title}: [{style}]{doc['verdict'].upper()}[/] against {doc['profile']} "
            f"({counts['fail']} fail, {counts['warn']} warn, {counts['info']} info)"
        )
        for f in doc["findings"]:  # one line each: greppable, and readable in a narrow terminal
            value = "" if f["value"] is None else f"{f['value']:.6g} {f['unit']}"
            sev = f["severity"]
            colour = {"fail": "red", "warn": "yellow"}.get(sev, "dim")
            out_console.print(
                f"[{colour}]{sev:<4}[/] {f['start_tc']}-{f['end_tc']}  {f['rule']}  {value}  {f['detail']}",
                soft_wrap=True, highlight=False,
            )  # fmt: skip
        for check, why in doc["not_checked"].items():
            out_console.print(f"not checked: {check}: {why}", soft_wrap=True)
    raise typer.Exit(EXIT_FAILED if doc["verdict"] == "fail" else EXIT_OK)


def _local_source(manifest: dict[str, Any]) -> Path | None:
    uri = manifest.get("source", {}).get("uri") or ""
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        path = Path(unquote(urlparse(uri).path))
    else:
        path = Path(uri)
    return path if uri and path.is_file() else None


@app.command()
def sample(
    path: Path = typer.Argument(Path("sample.mp4"), help="Where to write the sample video."),
    width: int = typer.Option(640, help="Frame width."),
    height: int = typer.Option(360, help="Frame height."),
) -> None:
    """Generate a sample title with known cuts, dissolves, black, frozen and silent spans."""
    from dataclasses import replace

    from prism.synth import build_title, sample_title

    truth = build_title(replace(sample_title(), width=width, height=height), path)
    out_console.print(f"wrote {path}: {truth.frame_count} frames at {truth.fps} fps")
    out_console.print(f"  hard cuts at frames {truth.cuts}")
    out_console.print(f"  gradual transitions (frames) {truth.gradual}")
    out_console.print(f"  black {truth.black}, frozen {truth.frozen}")


@app.command()
def version() -> None:
    """Print Prism's version."""
    out_console.print(__version__)


def _span(start: float | None, end: float | None) -> str:
    def clock(t: float | None) -> str:
        return "?" if t is None else f"{int(t // 3600):02d}:{int(t % 3600 // 60):02d}:{t % 60:04.1f}"

    return f"{clock(start)}–{clock(end)}"


@app.command()
def search(
    query: str | None = typer.Argument(None, help="Text describing the shots to find."),
    image: Path | None = typer.Option(None, "--image", help="Find shots that look like this image instead."),
    title: str | None = typer.Option(None, "--title", "-t", help="Search this title only."),
    top: int = typer.Option(10, "--top", "-k", min=1, help="How many shots to return."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", "-o", help="Output directory holding catalog.sqlite."),
    model: str = typer.Option("", "--model", help="Model directory or cached id (default: $PRISM_EMBEDDINGS_MODEL)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Find shots by text or by a reference image across every embedded title in OUT."""
    from prism.errors import PrismError
    from prism.search import find_shots

    try:
        hits = find_shots(out, text=query, image=image, model=model, top_k=top, title=title)
    except PrismError as exc:
        console.print(f"[red]error:[/] {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    if as_json:
        out_console.print_json(json.dumps([{**vars(h.shot), "score": h.score} for h in hits]))
        return
    table = Table()
    for col in ("title", "shot", "time", "score", "keyframe"):
        table.add_column(col)
    for h in hits:
        s = h.shot
        table.add_row(s.title_id, str(s.shot_index), _span(s.start_s, s.end_s), f"{h.score:.3f}", s.keyframe or "")
    out_console.print(table)


@app.command()
def duplicates(
    title: str | None = typer.Option(None, "--title", "-t", help="Only pairs involving this title."),
    threshold: float = typer.Option(0.95, "--threshold", help="Minimum cosine similarity of a pair."),
    across: bool = typer.Option(False, "--across", help="Only pairs from two different titles."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", "-o", help="Output directory holding catalog.sqlite."),
    model: str = typer.Option("", "--model", help="Whose vectors, when titles were embedded with several models."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Near-duplicate shots (recaps, intros, reused footage) inside and across titles."""
    from prism.errors import PrismError
    from prism.search import find_duplicates

    try:
        pairs = find_duplicates(out, model=model, threshold=threshold, title=title, across_titles=across)
    except PrismError as exc:
        console.print(f"[red]error:[/] {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    if as_json:
        rows = [{"group": p.group, "a": vars(p.a), "b": vars(p.b), "score": p.score} for p in pairs]
        out_console.print_json(json.dumps(rows))
        return
    table = Table()
    for col in ("group", "title", "shot", "time", "title ", "shot ", "time ", "score"):
        table.add_column(col)
    for p in pairs:
        a, b = p.a, p.b
        table.add_row(
            str(p.group), a.title_id, str(a.shot_index), _span(a.start_s, a.end_s),
            b.title_id, str(b.shot_index), _span(b.start_s, b.end_s), f"{p.score:.3f}",
        )  # fmt: skip
    out_console.print(table)
    out_console.print(f"{len(pairs)} near-duplicate pairs in {len({p.group for p in pairs})} groups")


@app.command()
def query(
    sql: str = typer.Argument(..., help="SQL over the catalogue-wide tables (shots, cues, titles, ...)."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", "-o", help="Output directory of the runs."),
    fmt: str = typer.Option("table", "--format", help="table | csv | json"),
) -> None:
    """Run SQL with DuckDB over every processed title: the same tables and SQL as Athena in the cloud."""
    import csv
    import sys

    from prism.query import run_query

    if fmt not in ("table", "csv", "json"):
        console.print(f"[red]error:[/] --format must be table, csv or json, not {fmt!r}")
        raise typer.Exit(EXIT_USAGE)
    try:
        result = run_query(out, sql)
    except ConfigError as exc:
        console.print(f"[red]error:[/] {exc}", soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    if fmt == "json":
        rows = [dict(zip(result.columns, row)) for row in result.rows]
        out_console.print_json(json.dumps(rows, ensure_ascii=False, default=str))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(result.columns)
        writer.writerows(result.rows)
    else:
        table = Table()
        for col in result.columns:
            table.add_column(col)
        for row in result.rows:
            table.add_row(*("" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
        out_console.print(table)
        console.print(f"{len(result.rows)} rows")


def main() -> None:
    for stream in (sys.stdout, sys.stderr):  # a non-UTF-8 file name is printed escaped, never a crash
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    app(prog_name="prism")


if __name__ == "__main__":
    main()
