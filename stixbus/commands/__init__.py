"""CLI command groups, one module per concern (`stixbus <group> ...`), added in stixbus/cli.py."""
