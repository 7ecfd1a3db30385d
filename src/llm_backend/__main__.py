"""`python -m llm_backend` is the `llm-backend` command."""

from llm_backend.cli import main

main()
