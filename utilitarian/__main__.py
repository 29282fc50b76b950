"""`python -m utilitarian` is the same as the `utilitarian` command."""

from utilitarian.cli import entry

entry()
