"""`python cli.py ...` runs the command line, retrieval.apps.cli (installed as `tweet-retrieval`)."""

from retrieval.apps.cli import cli

if __name__ == "__main__":
    cli()
