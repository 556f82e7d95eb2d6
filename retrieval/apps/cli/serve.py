"""`serve`: the HTTP API and the web page over indexes loaded once."""

from __future__ import annotations

from pathlib import Path

import click

from retrieval.apps.cli.options import CLIP, LLM, root_threads, user_errors

LOCAL = ("127.0.0.1", "localhost", "::1")


@click.command()
@click.option(
    "--index",
    "index_paths",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="Index folder (repeat).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Other than 127.0.0.1 needs --token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--token", default=None, envvar="RETRIEVAL_TOKEN", help="Every /v1/ call must send Authorization: Bearer TOKEN."
)
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Read the token from a file.",
)
@LLM
@click.option("--no-llm", is_flag=True, help="Serve search and prediction only (no generation, less memory).")
@click.option("--workers", type=click.IntRange(1), default=32, show_default=True, help="Requests answered at once.")
@click.option("--cors", default=None, metavar="ORIGIN", help="Allow this origin to call the API from a browser.")
@CLIP
def serve(
    index_paths: tuple[Path, ...],
    host: str,
    port: int,
    token: str | None,
    token_file: Path | None,
    llm_path: str | None,
    no_llm: bool,
    workers: int,
    cors: str | None,
    clip_checkpoint: Path | None,
    clip_model: str | None,
) -> None:
    """Serve indexes over HTTP: JSON under /v1/ (schema at /docs) and a web page at /."""
    from retrieval.apps.api.server import listen, load, run

    if token_file is not None:
        token = token_file.read_text(errors="replace").strip()
        if not token:
            raise click.ClickException(f"{token_file}: empty; a token file holds the token on its first line")
    if host not in LOCAL and not token:
        raise click.ClickException(f"--host {host} would open the server to the network: give --token or --token-file")
    with user_errors():
        sock = listen(host, port)
        app = load(index_paths, llm=llm_path, generation=not no_llm, clip_checkpoint=clip_checkpoint,
                   clip_model=clip_model, token=token, cors=cors, threads=root_threads())  # fmt: skip
    for index in app.state.indexes:
        manifest = index.searcher.reader.manifest
        click.echo(f"index {index.name}: version {manifest.version}, {manifest.next_id} rows ({index.path})", err=True)
    model = app.state.model
    click.echo(f"model {model.generator.name if model else 'none (--no-llm)'}", err=True)
    shown = "127.0.0.1" if host in ("127.0.0.1", "localhost") else (f"[{host}]" if ":" in host else host)
    url = f"http://{shown}:{sock.getsockname()[1]}/"
    click.echo(f"open {url}  (API docs: /docs; Ctrl-C stops)", err=True)
    try:
        run(app, sock, workers=workers)
    except KeyboardInterrupt:  # uvicorn stops on Ctrl-C, then raises it again for its caller
        pass
    click.echo("stopped", err=True)
