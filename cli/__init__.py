"""Command-line helpers of the pack (run from the repository root as ``python -m cli.<module>``)."""
