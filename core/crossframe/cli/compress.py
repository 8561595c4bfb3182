"""``crossframe compress`` and ``crossframe export``: the pipeline on an existing run. Heavy imports stay inside."""

from __future__ import annotations

import click


@click.command("compress")
@click.argument("run_dir", type=click.Path())
@click.option("--backend", "-b", help="Compress, fine-tune and evaluate on this backend instead of the run's own.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set compress.0.sparsity=0.7 (repeatable).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="Take the 'compress' (and 'export') lists from this file instead of the run's config.")
@click.option("--no-export", is_flag=True, help="Skip the export list.")
@click.option("--threads", type=int, default=0, show_default=True,
              help="ONNX Runtime intra-op threads for verification and latency (0: its own choice).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar while fine-tuning.")
def compress_command(run_dir: str, backend: str | None, overrides: tuple[str, ...], config_file: str | None,
                     no_export: bool, threads: int, quiet: bool) -> None:
    """Apply the run's compress steps (or those of --config FILE) to RUN_DIR's trained model.

    Writes RUN_DIR/compressed/<i>-<name>/ per step and RUN_DIR/report.md / report.json.
    """
    from crossframe.compress.pipeline import Options, compress_run

    report, added = compress_run(run_dir, overrides, backend=backend, config=config_file, export=not no_export,
                                 options=Options(quiet=quiet, threads=threads))
    report.print_table(report.steps[-added:] if added else [], title=f"crossframe compress: {run_dir}")
    click.echo(f"report: {report.run_dir / 'report.md'}")


@click.command("export")
@click.argument("run_dir", type=click.Path())
@click.option("--format", "-f", "formats", multiple=True, required=True, metavar="NAME",
              help="Exporter (onnx, onnx-int8-dynamic, onnx-int8-static, torch-int8, tflite-int8, native, ...); "
                   "repeatable.")
@click.option("--backend", "-b", help="Build the model on this backend instead of the run's own.")
@click.option("--checkpoint", type=click.Path(), metavar="DIR",
              help="Export this checkpoint (checkpoints/step_N or compressed/<i>-<name>) instead of the final one.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value (repeatable).")
@click.option("--threads", type=int, default=0, show_default=True,
              help="ONNX Runtime intra-op threads for verification and latency (0: its own choice).")
@click.option("--no-latency", is_flag=True, help="Skip the latency measurement.")
def export_command(run_dir: str, formats: tuple[str, ...], backend: str | None, checkpoint: str | None,
                   overrides: tuple[str, ...], threads: int, no_latency: bool) -> None:
    """Export RUN_DIR's final model (its last compressed step, else its latest checkpoint), verified."""
    if "hf" in formats:  # a Hugging Face directory (crossframe.hf), not an exporter artefact
        from crossframe.hf.exporting import export_run_hf

        click.echo(f"hf: {export_run_hf(run_dir, checkpoint)}")
        formats = tuple(f for f in formats if f != "hf")
        if not formats:
            return
    from crossframe.compress.pipeline import Options, export_run

    report, entries = export_run(run_dir, formats, backend=backend, checkpoint=checkpoint, overrides=overrides,
                                 options=Options(threads=threads, latency=not no_latency))
    report.print_table(entries, title=f"crossframe export: {run_dir}")
    for entry in entries:
        click.echo(f"{entry['name']}: {entry['path']}")
    click.echo(f"report: {report.run_dir / 'report.md'}")


COMMANDS = [compress_command, export_command]
