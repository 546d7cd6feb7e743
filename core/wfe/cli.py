"""The ``wfe`` command line (typer).

Exit codes: 0 all inputs done; 1 some inputs failed (the others finished);
2 bad workflow or usage. Errors are one line unless ``--debug``.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from wfe.errors import WfeError, WorkflowError

__all__ = ["app", "main"]

app = typer.Typer(
    name="wfe",
    help="Workflow engine for whole-slide and satellite images too big for memory.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

EXIT_OK, EXIT_FAILED_INPUTS, EXIT_USAGE = 0, 1, 2


def _registry() -> Any:
    from wfe.plugins import get_registry

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry = get_registry()
    for w in caught:
        err.print(f"[yellow]warning:[/yellow] {w.message}", highlight=False)
    return registry


def _fail(exc: WfeError, code: int, debug: bool = False) -> None:
    if debug:
        import traceback

        err.print(traceback.format_exc(), highlight=False)
    prefix = "" if isinstance(exc, WorkflowError) else "error: "
    for line in exc.line().splitlines():
        err.print(f"{prefix}{line}", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(code)


DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]


@app.command()
def validate(
    workflow: Annotated[Path, typer.Argument(help="Workflow YAML file.")],
    set_: Annotated[list[str], typer.Option("--set", help="Override: STAGE.KEY=VALUE.")] = [],  # noqa: B006
    debug: DebugOpt = False,
) -> None:
    """Check a workflow without reading any pixel; list every problem."""
    from wfe.workflow import load_workflow

    try:
        wf = load_workflow(workflow, _registry(), set_)
    except WfeError as exc:
        _fail(exc, EXIT_USAGE, debug)
    out.print(f"{workflow}: valid ({len(wf.stages)} stages: "
              f"{', '.join(f'{s.id}<{s.uses}>' for s in wf.stages)})", highlight=False)


@app.command()
def run(
    workflow: Annotated[Path, typer.Argument(help="Workflow YAML file.")],
    input_: Annotated[list[str], typer.Option("-i", "--input",
                                              help="Input path or glob (repeatable).")] = [],  # noqa: B006
    output: Annotated[Path | None, typer.Option("-o", "--output",
                                                help="Output root (one folder per input).")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override: STAGE.KEY=VALUE.")] = [],  # noqa: B006
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    workers: Annotated[int | None, typer.Option(help="Worker threads (default: cores).")] = None,
    scheduler: Annotated[str | None, typer.Option(
        help="A dask.distributed scheduler's address (tcp://host:8786): the inputs run on "
             "its workers, one input per task; paths must be the same on every machine.")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume/--no-resume",
        help="Skip inputs an earlier run into this output root finished, with the same "
             "workflow and input (--no-resume runs them again).")] = True,
    debug: DebugOpt = False,
) -> None:
    """Run a workflow on its inputs; results go to one folder per input."""
    from wfe.batch import expand_inputs, run_batch
    from wfe.workflow import load_workflow

    if device not in ("auto", "cpu", "cuda"):
        _fail(WfeError(f"--device {device!r} is not one of auto, cpu, cuda"), EXIT_USAGE)
    if workers is not None and scheduler is not None:
        _fail(WfeError("--workers and --scheduler exclude each other",
                       "with --scheduler each worker runs one input on its machine's cores "
                       "(start workers with `dask worker ADDRESS --nthreads 1`)"), EXIT_USAGE)
    registry = _registry()
    try:
        wf = load_workflow(workflow, registry, set_)
    except WfeError as exc:
        _fail(exc, EXIT_USAGE, debug)
    inputs = (expand_inputs(input_, Path.cwd()) if input_
              else expand_inputs(wf.inputs, wf.directory))
    if not inputs:
        _fail(WfeError(f"{workflow}: no inputs", "give -i PATH or list inputs: in the workflow"),
              EXIT_USAGE)
    template = str(output / "{input.stem}") if output is not None else wf.output
    try:
        result = run_batch(wf, inputs, registry, output_template=template, device=device,
                           workers=workers, debug=debug, console=err, resume=resume,
                           scheduler=scheduler)
    except WfeError as exc:
        _fail(exc, EXIT_USAGE, debug)
    if result.stopped:
        err.print(f"error: {result.stopped}", highlight=False, markup=False, soft_wrap=True)
    done = len(result.records) - len(result.failed)
    by = [f"{len(result.resumed)} by an earlier run"] * bool(result.resumed) + \
        [f"{len(result.concurrent)} by another run at the same time"] * bool(result.concurrent)
    earlier = f" ({', '.join(by)})" if by else ""
    out.print(f"{done} of {len(result.records)} inputs done{earlier}; results in "
              f"{result.root}/ (report.html, run.json, wfe.log)", highlight=False)
    raise typer.Exit(EXIT_FAILED_INPUTS if result.failed else EXIT_OK)


@app.command()
def plugins(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List installed plugins, their versions and what each contributes."""
    registry = _registry()
    if as_json:
        print(json.dumps([p.as_dict() for p in registry.plugins], indent=2))
        return
    table = Table("plugin", "version", "contributes", title="wfe plugins")
    for p in registry.plugins:
        contributes = "\n".join(f"{k}: {', '.join(v)}" for k, v in p.contributions.items())
        table.add_row(p.name, p.version, contributes or "-")
    out.print(table)
    for name, why in registry.failures.items():
        out.print(f"[yellow]{name}: failed to load ({why})[/yellow]")


@app.command()
def stages(name: Annotated[str | None, typer.Argument(help="Show one stage's parameters.")] = None,
           debug: DebugOpt = False) -> None:
    """List the stages, or the parameters of one."""
    registry = _registry()
    if name is None:
        table = Table("stage", "plugin", "summary")
        for key, c in sorted(registry.stages.items()):
            table.add_row(key, c.plugin, c.spec.summary)
        out.print(table)
        return
    try:
        stage = registry.stage(name).load()
    except WfeError as exc:
        _fail(exc, EXIT_USAGE, debug)
    from wfe.stage import ref_fields

    refs = set(ref_fields(stage.Params))
    table = Table("key", "type", "default", "description", title=f"stage {name}: "
                  f"outputs {', '.join(stage.outputs) or '-'}")
    for key, f in stage.Params.model_fields.items():
        kind = "reference" if key in refs else getattr(f.annotation, "__name__", str(f.annotation))
        default = "required" if f.is_required() else repr(f.default)
        table.add_row(key, kind, default, f.description or "")
    out.print(table)


@app.command()
def info(image: Annotated[Path, typer.Argument(help="An image file or folder.")],
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
         debug: DebugOpt = False) -> None:
    """Describe an image: levels, pixel size, channels, reader."""
    from wfe.io import open_image

    try:
        raster = open_image(image, _registry())
    except WfeError as exc:
        _fail(exc, EXIT_FAILED_INPUTS, debug)
    data = describe(image, raster)
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    unit = data["unit"] or "px"
    geometry = data["crs"] or (f"{data['levels'][0]['pixel_size']:.4g} {unit}/px"
                               if data["unit"] else "no pixel size")
    table = Table("level", "c × y × x", "chunks", "downsample", f"{unit}/px",
                  title=f"{image}\n{data['reader']} · {data['vendor'] or '-'} · {data['dtype']} · "
                        f"{geometry}")
    for lv in data["levels"]:
        table.add_row(str(lv["level"]), " × ".join(map(str, lv["shape"])),
                      " × ".join(map(str, lv["chunks"])), f"{lv['downsample']:g}",
                      "-" if lv["pixel_size"] is None else f"{lv['pixel_size']:.4g}")
    out.print(table)
    facts = {"channels": ", ".join(data["channels"]),
             "crs": data["crs"], "ground sample distance":
                 f"{data['levels'][0]['pixel_size']:.4g} {unit}" if data["crs"] else None,
             "nodata": data.get("nodata"), "objective power": data.get("objective_power"),
             "associated images": ", ".join(data["associated"]) or None}
    for key, value in facts.items():
        if value is not None:
            out.print(f"{key}: {value}")


def describe(path: Path, raster: Any) -> dict[str, Any]:
    """What ``wfe info`` shows of an opened image, as plain data."""
    res = raster.resolutions()
    levels = [{"level": i, "shape": list(lvl.shape), "chunks": [c[0] for c in lvl.chunks],
               "downsample": round(d, 3), "pixel_size": None if res is None else round(res[i], 6)}
              for i, (lvl, d) in enumerate(zip(raster.levels, raster.downsamples(), strict=True))]
    keep = ("nodata", "objective_power", "associated_sizes", "axes", "overviews")
    return {"path": str(path), "reader": raster.attrs.get("reader"),
            "vendor": raster.attrs.get("vendor"), "dtype": str(raster.dtype),
            "channels": list(raster.channels), "unit": raster.unit, "crs": raster.crs,
            "transform": None if raster.transform is None else list(raster.transform),
            "levels": levels, "associated": list(raster.attrs.get("associated", [])),
            **{k: raster.attrs[k] for k in keep if k in raster.attrs}}


def _add_plugin_commands() -> None:
    """Sub-commands contributed through ``wfe_commands`` (imported only when called)."""
    own = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands
           if c.callback is not None}
    if len(sys.argv) > 1 and sys.argv[1] in own:
        return
    try:
        registry = _registry()
    except WfeError:
        return
    for name, contribution in registry.commands.items():
        func = contribution.spec.load()
        app.command(name=name, help=contribution.spec.summary or None)(func)


def main() -> None:
    """Console-script entry point."""
    from wfe.heap import use_huge_pages

    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    use_huge_pages()  # before anything imports torch
    try:
        try:
            _add_plugin_commands()
            app()
        except WfeError as exc:
            _fail(exc, EXIT_USAGE)
    except typer.Exit as exc:
        code: Any = exc.exit_code
    except SystemExit as exc:
        code = exc.code
    else:
        code = EXIT_OK
    if "torch" in sys.modules:
        _exit_without_teardown(code)
    sys.exit(code)


def _exit_without_teardown(code: Any) -> None:
    """End a process that imported torch once its work is written: the exit handlers
    run (logs flushed, clients closed) and the output streams are flushed, but neither
    the interpreter nor the libraries are torn down. A CUDA build of torch loads its
    CUDA libraries even on a CPU, and their destructors fault in about 100 MiB of them
    as the process ends: the peak memory of a whole run was reached after its last
    input, and ending took 0.2-0.3 s more (docs/inference.md, Exit)."""
    import atexit

    if isinstance(code, str):  # as sys.exit does with a message
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more to say
            pass
    os._exit(code or 0)
