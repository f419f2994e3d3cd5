"""`skelpgt` command line: what users do by hand (models, data, conversion, inspection)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="SMPL → SKEL pseudo ground truth: models, data, labels and releases.", no_args_is_help=True)
models_app = typer.Typer(help="Body-model files: make synthetic stand-ins, check a models directory.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("make-synthetic")
def models_make_synthetic(
    out: Path = typer.Argument(..., help="Folder to write smpl/, skel/ and hsmr/ into."),
    tiny: bool = typer.Option(False, help="Small skeleton mesh (for tests); the skin stays 6890 vertices."),
    seed: int = typer.Option(0, help="Seed of the stand-in's pose blend shapes."),
) -> None:
    """Write synthetic SMPL/SKEL/HSMR model files in the official formats."""
    from skelpgt.fitting.models import check_models_dir
    from skelpgt.fitting.synthetic import make_synthetic_models

    make_synthetic_models(out, tiny=tiny, seed=seed)
    problems = check_models_dir(out)
    if problems:
        raise typer.Exit(_report(problems))
    typer.echo(f"wrote synthetic models to {out}")


@models_app.command("check")
def models_check(path: Path = typer.Argument(..., help="Models directory (real or synthetic).")) -> None:
    """Validate a models directory; exit 1 and list every problem if anything is missing or wrong."""
    from skelpgt.fitting.models import check_models_dir

    problems = check_models_dir(path)
    if problems:
        raise typer.Exit(_report(problems))
    typer.echo(f"{path}: all model files present and well-formed")


def _report(problems: list[str]) -> int:
    for line in problems:
        typer.echo(f"error: {line}", err=True)
    return 1


if __name__ == "__main__":
    app()
